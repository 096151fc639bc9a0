// SPDX-License-Identifier: GPL-2.0-only
/* The kernel data path of the legacy wire (protocol.md 2, 4.1, 4.2):
 *
 * vs_encap  clsact egress of a vnet's TAP and of its kernel port P (what the
 *           bridge sends towards the network): known unicast IPv4 from a
 *           domain is put in IPv4/UDP 1798/VnetMsgHdr/etherip and sent out
 *           of the underlay;
 * vs_decap  clsact ingress of the underlay: data messages for an attached
 *           vnet to the engine's care-of address lose those headers and
 *           enter the vnet's bridge through the kernel port (P, a veth
 *           whose other end Q they leave by, so veth's GRO merges them).
 *
 * Anything else goes on to the TAP (and the engine's user-space path; P
 * hands it to the TAP's egress) or to the host's UDP socket, unchanged, and
 * a per-vnet counter says why.  The engine keeps the maps in step with its
 * own tables, reads learn events from a ring buffer and the use stamps the
 * programs write into the remote and local entries.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <linux/tcp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_core_read.h>

#include "vnet_shim.h"

char LICENSE[] SEC("license") = "GPL";

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct vs_config);
} vs_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, VS_MAX_VNETS);
	__type(key, struct vs_vid);
	__type(value, struct vs_vnet);
} vs_vnets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, VS_MAX_DEVS);
	__type(key, __u32);
	__type(value, struct vs_dev);
} vs_devs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, VS_MAX_REMOTES);
	__type(key, struct vs_mac_key);
	__type(value, struct vs_remote);
} vs_remotes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, VS_MAX_LOCALS);
	__type(key, struct vs_mac_key);
	__type(value, struct vs_local);
} vs_locals SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, VS_MAX_VNETS);
	__type(key, __u32);
	__type(value, struct vs_counters);
} vs_counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, VS_MAX_SEEN);
	__type(key, struct vs_mac_key);
	__type(value, __u64);
} vs_seen SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, VS_MAX_VNETS);
	__type(key, __u32);
	__type(value, struct vs_budget);
} vs_budget SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, VS_EVENTS_BYTES);
} vs_events SEC(".maps");

/* skb->ip_summed, which struct __sk_buff does not show: a frame whose
 * checksum a device still has to fill (CHECKSUM_PARTIAL) must not reach a
 * receiver that does not decapsulate in its kernel. */
extern void *bpf_cast_to_kern_ctx(void *obj) __ksym;

struct sk_buff {
	__u8 ip_summed:2;
} __attribute__((preserve_access_index));

#define CHECKSUM_PARTIAL 3

#define IP_MF 0x2000
#define IP_OFFSET 0x1fff
#define TCP_FLAG_SYN 0x02

static __always_inline int csum_partial_pending(struct __sk_buff *ctx)
{
	struct sk_buff *skb = bpf_cast_to_kern_ctx(ctx);

	return BPF_CORE_READ_BITFIELD(skb, ip_summed) == CHECKSUM_PARTIAL;
}

static __always_inline void count(__u32 index, int which)
{
	struct vs_counters *c = bpf_map_lookup_elem(&vs_counters, &index);

	if (c && which >= 0 && which < VS_C_COUNT)
		c->c[which]++;
}

static __always_inline __u16 ipv4_csum(const struct iphdr *ip)
{
	const __u16 *w = (const __u16 *)ip;
	__u32 sum = 0;

#pragma unroll
	for (int i = 0; i < 10; i++)
		sum += w[i];
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return ~sum & 0xffff;
}

/* A learn event, at most one per (vnet, MAC, kind) per second (an LRU map
 * remembers when each was last reported) and at most VS_EVENT_BUDGET per
 * vnet per second (a window counter per vnet); the rest are counted as
 * events_suppressed, and a full ring buffer as events_lost. */
static __always_inline void emit(__u32 kind, const __u8 *vid, const __u8 *mac,
				 __u32 addr, __u32 index, __u64 now)
{
	struct vs_mac_key k = {};
	__u64 *last;
	struct vs_budget *b;
	struct vs_event *e;

	__builtin_memcpy(k.vid, vid, 16);
	__builtin_memcpy(k.mac, mac, 6);
	k.kind = kind;
	last = bpf_map_lookup_elem(&vs_seen, &k);
	if (last && now - *last < VS_EVENT_REPEAT_NS)
		return;
	b = bpf_map_lookup_elem(&vs_budget, &index);
	if (b) {
		if (now - b->window >= VS_EVENT_REPEAT_NS) {
			b->window = now;
			b->count = 0;
		}
		if (b->count >= VS_EVENT_BUDGET) {
			count(index, VS_C_EVENTS_SUPPRESSED);
			return;
		}
		__sync_fetch_and_add(&b->count, 1);
	}
	bpf_map_update_elem(&vs_seen, &k, &now, BPF_ANY);
	e = bpf_ringbuf_reserve(&vs_events, sizeof(*e), 0);
	if (!e) {
		count(index, VS_C_EVENTS_LOST);
		return;
	}
	e->kind = kind;
	e->addr = addr;
	__builtin_memcpy(e->vid, vid, 16);
	__builtin_memcpy(e->mac, mac, 6);
	e->pad = 0;
	bpf_ringbuf_submit(e, 0);
}

/* A frame came from the MAC of a remote or local entry: the engine reads
 * the stamp at its refresh and keeps the entry from ageing (the programs
 * report only what their maps lack).  Written at most once a second, so a
 * stream costs one store a second, not one a frame. */
static __always_inline void stamp_used(__u64 *used, __u64 now)
{
	if (*used + VS_USED_EVERY_NS <= now)
		*used = now;
}

/* Lower the MSS option of a TCP SYN (or SYN-ACK) to ``mss`` so a full-size
 * segment fits the underlay once encapsulated: without it every full-size
 * frame would be fragmented or go through user space. */
static __always_inline void clamp_mss(struct __sk_buff *skb, __u32 tcp_off,
				      __u16 mss, __u32 index)
{
	struct tcphdr th;
	__u8 opts[64] = {};
	__u32 optlen, i = 0;

	if (!mss || bpf_skb_load_bytes(skb, tcp_off, &th, sizeof(th)) < 0)
		return;
	if (!th.syn)
		return;
	optlen = th.doff * 4;
	if (optlen <= 20)
		return;
	optlen -= 20;
	if (optlen > 40)
		return;
	if (bpf_skb_load_bytes(skb, tcp_off + 20, opts, optlen) < 0)
		return;
#pragma unroll
	for (int n = 0; n < 20; n++) {
		__u8 kind, len;

		if (i >= optlen || i >= 40)
			break;
		kind = opts[i & 63];
		if (kind == 0)
			break;
		if (kind == 1) {
			i++;
			continue;
		}
		if (i + 1 >= optlen)
			break;
		len = opts[(i + 1) & 63];
		if (len < 2)
			break;
		if (kind == 2 && len == 4 && i + 3 < optlen) {
			__u16 old = (opts[(i + 2) & 63] << 8) | opts[(i + 3) & 63];

			if (old > mss) {
				__be16 from = bpf_htons(old), to = bpf_htons(mss);

				/* The option and the checksum change together, so a
				 * CHECKSUM_COMPLETE sum of the packet stays right; a
				 * CHECKSUM_PARTIAL field is left as it is by the helper. */
				bpf_l4_csum_replace(skb, tcp_off + 16, from, to, 2);
				bpf_skb_store_bytes(skb, tcp_off + 20 + i + 2, &to, 2, 0);
				count(index, VS_C_MSS_CLAMPED);
			}
			break;
		}
		i += len;
	}
}

#define VS_C_NONE (-1)

/* A frame the encapsulator does not take: on the TAP it goes on to the
 * engine (counted by why); P hands it to the TAP's egress, whose program
 * looks at it again and counts it there, once. */
static __always_inline int leave(struct __sk_buff *skb, const struct vs_dev *dev, int why)
{
	if (dev->kind == VS_DEV_PORT)
		return bpf_redirect(dev->other_ifindex, 0);
	count(dev->index, why);
	return TC_ACT_OK;
}

struct encap_hdr {
	struct ethhdr outer_eth;
	struct iphdr ip;
	struct udphdr udp;
	__be16 msg_id;
	__be16 opcode;
	__u8 etherip[2];
	__u8 vid[16];
	struct ethhdr inner_eth;
} __attribute__((packed));

_Static_assert(sizeof(struct encap_hdr) == VS_HDR_LEN, "encap header size");

SEC("tc")
int vs_encap(struct __sk_buff *skb)
{
	__u32 key = 0, ifindex = skb->ifindex, index, mtu_len = 0;
	struct vs_config *cfg;
	struct vs_dev *dev;
	struct vs_remote *remote;
	struct vs_mac_key mk = {};
	struct encap_hdr h = {};
	struct iphdr ip = {};
	struct {
		struct ethhdr eth;
		struct iphdr ip;
	} __attribute__((packed)) in;
	__u32 ihl, gso;

	dev = bpf_map_lookup_elem(&vs_devs, &ifindex);
	if (!dev)
		return TC_ACT_OK;
	index = dev->index;
	/* From the network back to the network (a frame the engine wrote into
	 * the TAP for a MAC behind P, a decapsulated frame the bridge floods):
	 * the bridge would drop it on the port it came from. */
	if (dev->other_ifindex && skb->ingress_ifindex == dev->other_ifindex) {
		count(index, VS_C_DROPPED_LOOP);
		return TC_ACT_SHOT;
	}
	cfg = bpf_map_lookup_elem(&vs_config, &key);
	if (!cfg || !cfg->local_addr || bpf_skb_load_bytes(skb, 0, &in.eth, sizeof(in.eth)) < 0)
		return leave(skb, dev, VS_C_NONE);

	__builtin_memcpy(mk.vid, dev->vid, 16);
	if (!(in.eth.h_source[0] & 1)) {
		struct vs_local *local;
		__u64 now = bpf_ktime_get_ns();

		__builtin_memcpy(mk.mac, in.eth.h_source, 6);
		local = bpf_map_lookup_elem(&vs_locals, &mk);
		if (local)
			stamp_used(&local->used, now);
		else
			emit(VS_EVENT_LOCAL_SEEN, dev->vid, in.eth.h_source, 0, index, now);
	}
	if (in.eth.h_dest[0] & 1) {
		/* Flooding is off on P, but the bridge floods what the host
		 * sends through the bridge device to every port: the TAP has
		 * its own copy. */
		if (dev->kind == VS_DEV_PORT) {
			count(index, VS_C_DROPPED_PORT_FLOOD);
			return TC_ACT_SHOT;
		}
		return leave(skb, dev, VS_C_TO_USER_FLOOD);
	}
	if (in.eth.h_proto != bpf_htons(ETH_P_IP) ||
	    bpf_skb_load_bytes(skb, 0, &in, sizeof(in)) < 0 || in.ip.version != 4)
		return leave(skb, dev, VS_C_TO_USER_NOT_IPV4);
	if (in.ip.frag_off & bpf_htons(IP_MF | IP_OFFSET))
		return leave(skb, dev, VS_C_TO_USER_FRAGMENT);
	ihl = in.ip.ihl * 4;
	if (ihl < 20)
		return leave(skb, dev, VS_C_TO_USER_NOT_IPV4);
	if (in.ip.protocol == IPPROTO_TCP)
		clamp_mss(skb, 14 + ihl, cfg->mss, index);

	__builtin_memcpy(mk.mac, in.eth.h_dest, 6);
	remote = bpf_map_lookup_elem(&vs_remotes, &mk);
	if (!remote || !remote->addr)
		return leave(skb, dev, VS_C_TO_USER_NO_ROUTE);
	gso = skb->gso_segs > 1 || skb->gso_size;
	if (!(remote->flags & VS_REMOTE_KERNEL_PEER) && (gso || csum_partial_pending(skb)))
		return leave(skb, dev, VS_C_TO_USER_PARTIAL_CSUM_TO_LEGACY);
	if (gso) {
		/* Segments shrink by VS_ENCAP_LEN (no FIXED_GSO below), so they
		 * fit when an inner segment fits the underlay; only TCP (UDP GSO
		 * may not change its size). */
		struct tcphdr th;

		if (in.ip.protocol != IPPROTO_TCP ||
		    bpf_skb_load_bytes(skb, 14 + ihl, &th, sizeof(th)) < 0 ||
		    skb->gso_size + ihl + th.doff * 4 > cfg->underlay_mtu)
			return leave(skb, dev, VS_C_TO_USER_NO_FIT);
	} else if (bpf_check_mtu(skb, cfg->underlay_ifindex, &mtu_len, VS_ENCAP_LEN, 0) !=
		   BPF_MTU_CHK_RET_SUCCESS)
		return leave(skb, dev, VS_C_TO_USER_NO_FIT);

	if (bpf_skb_adjust_room(skb, VS_ENCAP_LEN, BPF_ADJ_ROOM_MAC,
				BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 | BPF_F_ADJ_ROOM_ENCAP_L4_UDP |
				BPF_F_ADJ_ROOM_ENCAP_L2_ETH | BPF_F_ADJ_ROOM_ENCAP_L2(ETH_HLEN)) < 0)
		return leave(skb, dev, VS_C_TO_USER_ERROR);

	h.outer_eth.h_proto = bpf_htons(ETH_P_IP);     /* MACs: bpf_redirect_neigh */
	ip.version = 4;
	ip.ihl = 5;
	ip.tot_len = bpf_htons(skb->len - ETH_HLEN);
	/* DF clear and an id, as the engine's UDP socket sends (IP_PMTUDISC_DONT):
	 * the stack fragments what does not fit, as legacy did (protocol.md 4.6). */
	ip.id = bpf_get_prandom_u32() & 0xffff;
	ip.frag_off = 0;
	ip.ttl = 64;
	ip.protocol = IPPROTO_UDP;
	ip.saddr = cfg->local_addr;
	ip.daddr = remote->addr;
	ip.check = ipv4_csum(&ip);
	h.ip = ip;
	h.udp.source = bpf_htons(cfg->port);
	h.udp.dest = bpf_htons(cfg->port);
	h.udp.len = bpf_htons(skb->len - ETH_HLEN - sizeof(struct iphdr));
	h.udp.check = 0;                                /* protocol.md 2 */
	h.msg_id = bpf_htons(2);
	h.opcode = 0;
	h.etherip[0] = 0x00;                            /* protocol.md 4.1 */
	h.etherip[1] = 0x40;
	__builtin_memcpy(h.vid, dev->vid, 16);
	h.inner_eth = in.eth;
	if (bpf_skb_store_bytes(skb, 0, &h, sizeof(h), 0) < 0) {
		/* The room is there but the headers are not: nothing sane can go on. */
		count(index, VS_C_TO_USER_ERROR);
		return TC_ACT_SHOT;
	}
	count(index, VS_C_ENCAPSULATED);
	return bpf_redirect_neigh(cfg->underlay_ifindex, NULL, 0, 0);
}

SEC("tc")
int vs_decap(struct __sk_buff *skb)
{
	__u32 key = 0, index;
	struct vs_config *cfg;
	struct vs_vnet *vnet;
	struct vs_remote *remote;
	struct vs_mac_key mk = {};
	struct encap_hdr h;
	__u32 gso;

	cfg = bpf_map_lookup_elem(&vs_config, &key);
	if (!cfg || !cfg->local_addr)
		return TC_ACT_OK;
	if (skb->protocol != bpf_htons(ETH_P_IP) ||
	    bpf_skb_load_bytes(skb, 0, &h, sizeof(h)) < 0)
		return TC_ACT_OK;
	/* Only unicast to the care-of address; options, other protocols,
	 * VARP, VFWD, id-5 segments and secured messages are the engine's. */
	if (h.outer_eth.h_proto != bpf_htons(ETH_P_IP) || h.ip.version != 4 || h.ip.ihl != 5 ||
	    h.ip.protocol != IPPROTO_UDP || h.ip.daddr != cfg->local_addr ||
	    h.udp.dest != bpf_htons(cfg->port) || h.msg_id != bpf_htons(2) ||
	    (h.etherip[1] >> 4) != 4)
		return TC_ACT_OK;
	__builtin_memcpy(mk.vid, h.vid, 16);
	vnet = bpf_map_lookup_elem(&vs_vnets, &mk.vid);
	if (!vnet)
		return TC_ACT_OK;
	index = vnet->index;
	if (h.ip.frag_off & bpf_htons(IP_MF | IP_OFFSET)) {
		count(index, VS_C_TO_USER_RX_FRAGMENT);
		return TC_ACT_OK;
	}
	if (h.ip.saddr == cfg->local_addr) {
		count(index, VS_C_TO_USER_RX_OWN);
		return TC_ACT_OK;
	}
	gso = skb->gso_segs > 1 || skb->gso_size;
	if (!gso && skb->len - VS_HDR_LEN > cfg->tap_mtu) {
		count(index, VS_C_TO_USER_RX_NO_FIT);
		return TC_ACT_OK;
	}
	/* A super-frame from a peer's encapsulator is one inner IPv4 packet
	 * whose length covers the whole skb.  Datagrams merged by UDP GRO (a
	 * NIC's GRO for the engine's UDP_GRO socket) each keep their own
	 * headers, and the first inner length covers only the first: those
	 * are the engine's to split. */
	if (gso) {
		struct iphdr inner;

		if (h.inner_eth.h_proto != bpf_htons(ETH_P_IP) ||
		    bpf_skb_load_bytes(skb, VS_HDR_LEN, &inner, sizeof(inner)) < 0 ||
		    bpf_ntohs(inner.tot_len) != skb->len - VS_HDR_LEN) {
			count(index, VS_C_TO_USER_RX_MERGED);
			return TC_ACT_OK;
		}
	}

	if (!(h.inner_eth.h_source[0] & 1)) {
		__u64 now = bpf_ktime_get_ns();

		__builtin_memcpy(mk.mac, h.inner_eth.h_source, 6);
		remote = bpf_map_lookup_elem(&vs_remotes, &mk);
		if (remote && remote->addr == h.ip.saddr)
			stamp_used(&remote->used, now);
		else
			emit(VS_EVENT_REMOTE_SEEN, h.vid, h.inner_eth.h_source, h.ip.saddr, index,
			     now);
	}

	if (bpf_skb_adjust_room(skb, -VS_ENCAP_LEN, BPF_ADJ_ROOM_MAC,
				BPF_F_ADJ_ROOM_FIXED_GSO) < 0) {
		count(index, VS_C_TO_USER_RX_ERROR);
		return TC_ACT_OK;
	}
	/* No BPF_F_RECOMPUTE_CSUM: at ingress a CHECKSUM_COMPLETE sum starts
	 * after the MAC header, so this write leaves it valid. */
	if (bpf_skb_store_bytes(skb, 0, &h.inner_eth, sizeof(h.inner_eth), 0) < 0) {
		count(index, VS_C_TO_USER_RX_ERROR);
		return TC_ACT_SHOT;
	}
	if (h.inner_eth.h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr ip;

		if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)) == 0 &&
		    ip.protocol == IPPROTO_TCP && ip.ihl >= 5 &&
		    !(ip.frag_off & bpf_htons(IP_OFFSET)))
			clamp_mss(skb, ETH_HLEN + ip.ihl * 4, cfg->mss, index);
	}
	count(index, VS_C_DECAPSULATED);
	/* Floods enter the bridge by the TAP, as when the engine writes them
	 * (the bridge sends them nowhere back to the network, and its snooping
	 * and learning see them where they always did); so does everything
	 * while the vnet's kernel port is on no bridge.  Unicast enters by P:
	 * a super-frame, aggregated already, directly; single segments by
	 * leaving Q, so that veth's GRO at P merges them. */
	if ((h.inner_eth.h_dest[0] & 1) || !vnet->port_ifindex)
		return bpf_redirect(vnet->tap_ifindex, BPF_F_INGRESS);
	if (gso)
		return bpf_redirect(vnet->port_ifindex, BPF_F_INGRESS);
	return bpf_redirect(vnet->peer_ifindex, 0);
}
