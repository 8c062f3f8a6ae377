"""
Container credential endpoints: ECS task roles and EKS Pod Identity
(docs/container-credentials.md).
"""
