/* (b) bare TC counter: one per-CPU array slot incremented per packet.
 * Build: clang -O2 -g -target bpf -c tc_count.c -o tc_count.o */
#include "afo_bpf.h"
#include <linux/pkt_cls.h>

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} afo_cnt SEC(".maps");

SEC("classifier")
int afo_count(struct __sk_buff *skb)
{
	__u32 k = 0;
	__u64 *v = bpf_map_lookup_elem(&afo_cnt, &k);
	if (v)
		*v += 1; /* per-CPU slot: no atomic needed */
	return TC_ACT_OK;
}

char _license[] SEC("license") = "GPL";
