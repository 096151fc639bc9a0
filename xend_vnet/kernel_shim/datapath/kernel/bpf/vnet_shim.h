/* The kernel data path's maps and records, shared by vnet_shim.bpf.c and
 * mirrored byte for byte by ../maps.py (a unit test compares the numbers).
 *
 * Every struct is packed by hand with explicit padding so its size is the
 * same for the compiler and for Python's struct module.
 */
#ifndef VNET_SHIM_H
#define VNET_SHIM_H

#include <linux/types.h>

/* Bump when a map's layout changes: a newer engine then replaces what an
 * older one left attached instead of adopting it. */
#define VS_LAYOUT_VERSION 3

#define VS_MAX_VNETS 4096        /* vnets carried in the kernel */
#define VS_MAX_DEVS (2 * VS_MAX_VNETS)   /* a TAP and a kernel port P per vnet */
#define VS_MAX_REMOTES 131072    /* = LIMITS["varp"].total of core/bounds.py */
#define VS_MAX_LOCALS 65536      /* = LIMITS["vif"].total */
#define VS_MAX_SEEN 16384        /* (vnet, MAC, kind) last reported, LRU */
#define VS_EVENTS_BYTES (256 * 1024)
#define VS_EVENT_BUDGET 256      /* events per vnet per second */
#define VS_EVENT_REPEAT_NS 1000000000ULL   /* one event per (vnet, MAC, kind) per second */
#define VS_USED_EVERY_NS 1000000000ULL     /* a remote or local entry's use stamped at most
					    * once a second */

/* Outer IPv4 20 + UDP 8 + VnetMsgHdr 4 + etherip 18 + the inner Ethernet
 * header 14 that sits between the outer and the inner IP header
 * (protocol.md 4.2: "64 counting the inner 14-byte Ethernet header"). */
#define VS_ENCAP_LEN 64
#define VS_HDR_LEN (14 + VS_ENCAP_LEN)

/* the config map's one entry */
struct vs_config {
	__u32 local_addr;        /* outer source, network order */
	__u32 underlay_ifindex;
	__u16 port;              /* host order */
	__u16 underlay_mtu;
	__u16 tap_mtu;
	__u16 mss;               /* TCP MSS clamp */
	__u32 version;           /* VS_LAYOUT_VERSION */
	__u32 pad;
};

struct vs_vid {
	__u8 vid[16];
};

/* vs_vnets: vnet id -> where its decapsulated frames go */
struct vs_vnet {
	__u32 tap_ifindex;
	__u32 port_ifindex;      /* the kernel port's bridge end P when it is on the TAP's
				  * bridge (super-frames enter the bridge there); 0: every
				  * frame enters the TAP, as the engine would write it */
	__u32 peer_ifindex;      /* the kernel port's other end Q: single segments leave by
				  * it and reach P through veth's GRO */
	__u32 index;             /* slot in vs_counters and vs_budget */
};

#define VS_DEV_TAP 0
#define VS_DEV_PORT 1

/* vs_devs: the egress devices the encapsulator sits on (a vnet's TAP and
 * its kernel port P) -> their vnet */
struct vs_dev {
	__u8 vid[16];
	__u32 index;
	__u32 kind;              /* VS_DEV_TAP or VS_DEV_PORT */
	__u32 other_ifindex;     /* a TAP: its port P when P is on its bridge (else 0); P:
				  * its TAP, where P sends what it does not take.  A frame
				  * that entered the bridge from the other is not sent
				  * back to the network */
	__u32 pad;
};

/* key of vs_remotes, vs_locals and vs_seen */
struct vs_mac_key {
	__u8 vid[16];
	__u8 mac[6];
	__u8 kind;               /* vs_seen only: the event kind; 0 elsewhere */
	__u8 pad;
};

#define VS_REMOTE_KERNEL_PEER 1

/* ``used``: bpf_ktime_get_ns() when a frame last came from the MAC (the
 * decapsulator, from that care-of address; the encapsulator, from a local
 * domain), written at most once every VS_USED_EVERY_NS; the engine writes
 * 0 with the entry and reads it to keep the entries in use from ageing. */
struct vs_remote {
	__u32 addr;              /* care-of address, network order */
	__u32 flags;
	__u64 used;
};

struct vs_local {
	__u64 used;
};

struct vs_budget {
	__u64 window;            /* start of the current second, ns */
	__u64 count;
};

#define VS_EVENT_REMOTE_SEEN 1
#define VS_EVENT_LOCAL_SEEN 2

struct vs_event {
	__u32 kind;
	__u32 addr;              /* network order; 0 for LOCAL_SEEN */
	__u8 vid[16];
	__u8 mac[6];
	__u16 pad;
};

/* per-vnet counters (per CPU); names in ../maps.py COUNTER_NAMES, same order */
enum vs_counter {
	VS_C_ENCAPSULATED,
	VS_C_DECAPSULATED,
	VS_C_TO_USER_NOT_IPV4,
	VS_C_TO_USER_FLOOD,
	VS_C_TO_USER_NO_ROUTE,
	VS_C_TO_USER_NO_FIT,
	VS_C_TO_USER_PARTIAL_CSUM_TO_LEGACY,
	VS_C_TO_USER_FRAGMENT,
	VS_C_TO_USER_ERROR,
	VS_C_TO_USER_RX_FRAGMENT,
	VS_C_TO_USER_RX_NO_FIT,
	VS_C_TO_USER_RX_OWN,
	VS_C_TO_USER_RX_ERROR,
	VS_C_MSS_CLAMPED,
	VS_C_EVENTS_SUPPRESSED,
	VS_C_EVENTS_LOST,
	VS_C_DROPPED_LOOP,
	VS_C_DROPPED_PORT_FLOOD,
	VS_C_TO_USER_RX_MERGED,
	VS_C_COUNT,
};

struct vs_counters {
	__u64 c[VS_C_COUNT];
};

#endif
