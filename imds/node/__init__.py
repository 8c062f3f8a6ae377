"""
`imds node-setup` and `imds node-cleanup`: make the link-local addresses of IMDS, the EKS
Pod Identity agent and ECS reach imds on a Kubernetes node, and undo exactly that.

Two modes, from the two agents that do this on AWS (docs/node-agent.md):
- dummy (link.py): the addresses on a link of their own, as the EKS Pod Identity agent
  does [K-13]; pyroute2 over netlink.
- dnat (dnat.py): iptables DNAT from the pods' interfaces to imds's address, as kube2iam
  does [K-14]; the iptables tools, in a chain of our own.
Flags: options.py; the command itself: command.py. Imports only imds.errors of imds.
"""
