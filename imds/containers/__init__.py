"""Container credential endpoints: ECS task roles and EKS Pod Identity (docs/spec.md, 14)."""

from __future__ import annotations
