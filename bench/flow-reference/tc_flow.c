/* (c) reference flow observer at TC: parses Ethernet (+ up to two 802.1Q/802.1ad
 * tags), IPv4 / IPv6 (skipping up to 4 extension headers), TCP / UDP, and keeps
 * one LRU-hash entry per directional 5-tuple with packets, bytes, first/last
 * seen (bpf_ktime_get_ns) and the OR of TCP flags.  Always returns TC_ACT_OK.
 * Build: clang -O2 -g -target bpf -c tc_flow.c -o tc_flow.o */
#include "afo_bpf.h"
#include <linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>

#ifndef AFO_FLOW_MAX
#define AFO_FLOW_MAX 65536
#endif

#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define afo_htons(x) ((__be16)__builtin_bswap16(x))
#else
#define afo_htons(x) ((__be16)(x))
#endif

struct afo_vlan_hdr {
	__be16 tci;
	__be16 encap_proto;
};

struct flow_key {
	__u8 src[16];    /* IPv6, or IPv4-mapped IPv6 (::ffff:a.b.c.d) */
	__u8 dst[16];
	__be16 sport;    /* 0 when not TCP/UDP or a non-first fragment */
	__be16 dport;
	__u8 proto;
	__u8 pad[3];
};

struct flow_val {
	__u64 packets;
	__u64 bytes;
	__u64 first_ns;
	__u64 last_ns;
	__u32 tcp_flags; /* OR of the TCP flag byte seen */
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, AFO_FLOW_MAX);
	__type(key, struct flow_key);
	__type(value, struct flow_val);
} afo_flows SEC(".maps");

/* rare-path counters: 0 not parsed (non-IP or truncated), 1 insert failed */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} afo_flow_err SEC(".maps");

static __always_inline void err_inc(__u32 k)
{
	__u64 *v = bpf_map_lookup_elem(&afo_flow_err, &k);
	if (v)
		*v += 1;
}

SEC("classifier")
int afo_flow(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct flow_key key;
	__builtin_memset(&key, 0, sizeof(key));

	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		goto unparsed;
	__be16 h_proto = eth->h_proto;
	void *nh = eth + 1;

#pragma unroll
	for (int i = 0; i < 2; i++) {
		if (h_proto == afo_htons(ETH_P_8021Q) || h_proto == afo_htons(ETH_P_8021AD)) {
			struct afo_vlan_hdr *vh = nh;
			if ((void *)(vh + 1) > data_end)
				goto unparsed;
			h_proto = vh->encap_proto;
			nh = vh + 1;
		}
	}

	void *l4;
	int ports_ok = 1;
	if (h_proto == afo_htons(ETH_P_IP)) {
		struct iphdr *ip = nh;
		if ((void *)(ip + 1) > data_end)
			goto unparsed;
		__u32 ihl = ip->ihl * 4;
		if (ihl < sizeof(*ip))
			goto unparsed;
		key.src[10] = 0xff;
		key.src[11] = 0xff;
		key.dst[10] = 0xff;
		key.dst[11] = 0xff;
		__builtin_memcpy(&key.src[12], &ip->saddr, 4);
		__builtin_memcpy(&key.dst[12], &ip->daddr, 4);
		key.proto = ip->protocol;
		if (ip->frag_off & afo_htons(0x1fff))
			ports_ok = 0; /* non-first fragment: no L4 header */
		l4 = nh + ihl;
	} else if (h_proto == afo_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = nh;
		if ((void *)(ip6 + 1) > data_end)
			goto unparsed;
		__builtin_memcpy(key.src, &ip6->saddr, 16);
		__builtin_memcpy(key.dst, &ip6->daddr, 16);
		__u8 nexthdr = ip6->nexthdr;
		l4 = ip6 + 1;
#pragma unroll
		for (int i = 0; i < 4; i++) {
			if (nexthdr == IPPROTO_HOPOPTS || nexthdr == IPPROTO_ROUTING ||
			    nexthdr == IPPROTO_DSTOPTS) {
				__u8 *eh = l4;
				if ((void *)(eh + 2) > data_end)
					goto unparsed;
				nexthdr = eh[0];
				l4 = eh + ((__u32)eh[1] + 1) * 8;
			} else if (nexthdr == IPPROTO_FRAGMENT) {
				__u8 *fh = l4;
				if ((void *)(fh + 8) > data_end)
					goto unparsed;
				nexthdr = fh[0];
				if ((fh[2] << 8 | fh[3]) & 0xfff8)
					ports_ok = 0;
				l4 = fh + 8;
			}
		}
		key.proto = nexthdr;
	} else {
		goto unparsed;
	}

	__u32 flags = 0;
	if (ports_ok && key.proto == IPPROTO_TCP) {
		struct tcphdr *th = l4;
		if ((void *)(th + 1) > data_end)
			goto unparsed;
		key.sport = th->source;
		key.dport = th->dest;
		flags = ((__u8 *)th)[13];
	} else if (ports_ok && key.proto == IPPROTO_UDP) {
		struct udphdr *uh = l4;
		if ((void *)(uh + 1) > data_end)
			goto unparsed;
		key.sport = uh->source;
		key.dport = uh->dest;
	}

	__u64 now = bpf_ktime_get_ns();
	struct flow_val *v = bpf_map_lookup_elem(&afo_flows, &key);
	if (likely(v != 0)) {
update:
		__sync_fetch_and_add(&v->packets, 1);
		__sync_fetch_and_add(&v->bytes, skb->len);
		v->last_ns = now;
		if ((v->tcp_flags & flags) != flags)
			v->tcp_flags |= flags; /* benign race: flags only accumulate */
		return TC_ACT_OK;
	}
	struct flow_val nv = {
		.packets = 1,
		.bytes = skb->len,
		.first_ns = now,
		.last_ns = now,
		.tcp_flags = flags,
	};
	if (bpf_map_update_elem(&afo_flows, &key, &nv, BPF_NOEXIST) == 0)
		return TC_ACT_OK;
	/* lost a race with another CPU inserting the same key */
	v = bpf_map_lookup_elem(&afo_flows, &key);
	if (v)
		goto update;
	err_inc(1);
	return TC_ACT_OK;

unparsed:
	err_inc(0);
	return TC_ACT_OK;
}

char _license[] SEC("license") = "GPL";
