"""xend-vnet: a user-space rebuild of Xen's vnet (distributed virtual Ethernet).

Packages: ``kernel_shim`` (the tunnel engine vnetd and the vn tool),
``xmlrpc`` (the xend vnet API server), ``xm_commands`` (xm vnet-*).
Shared modules here: ``sxp`` (xend s-expressions), ``vnet_id`` (128-bit ids).
"""

__version__ = "0.1.0"
