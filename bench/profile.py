#!/usr/bin/env python3
"""CPU per event by component, from a `perf script` dump.

    perf script -i perf.data -F comm,tid,ip,sym,dso > perf.txt
    bench/profile.py perf.txt EVENTS [CPU_SECONDS] [--drill COMPONENT]

Each sample's stack is read from the leaf towards the root; the first frame
that matches a rule below names the component (so `malloc` called from JSON
parsing counts as allocation, and a futex wake from a blocking-pool spawn
counts as task wake-ups). Prints the share of samples per component and,
given the number of events the run processed, microseconds of CPU per event
(CPU_SECONDS defaults to samples / sampling frequency, read from the dump's
sample count and `perf report --header`; pass it explicitly when known).
`--drill NAME` lists, for the components whose name starts with NAME, the
innermost Conveyor frames that the samples came through.
"""
import re
import sys
from collections import Counter

RULES = [
    ("allocation", r"^(_int_malloc|_int_free|malloc|cfree|free|realloc|_int_realloc|calloc|"
                   r"malloc_consolidate|unlink_chunk|tcache_|__libc_malloc|__libc_free|"
                   r"alloc::raw_vec|alloc::alloc::|__rust_alloc|__rust_dealloc|__rust_realloc)"),
    ("memcpy", r"^__mem(move|cpy|set|cmp)"),
    ("task wake-ups and scheduling", r"(futex|try_to_wake_up|schedule|finish_task_switch|"
                                     r"tokio::runtime::(scheduler|park|task|blocking)|"
                                     r"epoll|irqentry_exit|sched_|pthread_cond|"
                                     r"std::sys::sync|parking_lot|std::thread::park|"
                                     r"tokio::sync|futures_util::stream::futures_unordered|"
                                     r"futures_util::stream::futures_ordered|"
                                     r"tokio::runtime::io|__lll_lock_wake|^syscall )"),
    ("JSON parse and render", r"(serde_json|serde_core|serde::)"),
    ("hashing (sha256)", r"sha2::"),
    ("metrics", r"(^metrics|metrics_exporter|conveyor::metrics|conveyor::telemetry|prometheus)"),
    ("logging", r"(^tracing|tracing_subscriber|tracing_core)"),
    ("embedded store", r"(conveyor::transport::embedded|conveyor_store|conveyor::store)"),
    ("network (kernel TCP)", r"(tcp_|inet_|sock_|__sys_(recv|send)|sk_|ip_|__netif|net_rx|"
                             r"loopback|skb_|__dev_queue|sendmsg|recvmsg)"),
    ("file I/O (kernel)", r"(vfs_|ext4_|filemap|d_lookup|link_path_walk|path_|do_sys_open|"
                          r"do_filp_open|openat|__x64_sys_(rename|mkdir|unlink|fsync|fdatasync|"
                          r"open|close|statx|newfstatat|write|read|getdents)|"
                          r"shmem_|generic_perform_write|dput|iput|__fput|lookup_|"
                          r"inode_permission|step_into|walk_component|do_renameat|do_mkdirat)"),
    ("HTTP client (reqwest/hyper)", r"(reqwest|hyper_util::client|hyper::client|"
                                    r"conveyor::stages::http)"),
    ("simulated APIs (axum server)", r"(axum|hyper::server|hyper_util::server|tower|"
                                     r"conveyor::simulation)"),
    ("HTTP (hyper, either side)", r"(hyper::|h2::|http::|httparse)"),
    ("files stage (attachments)", r"(conveyor::stages::files|conveyor::fsync|std::fs|tokio::fs)"),
    ("stage pipeline (lanes, steps)", r"(conveyor::worker|conveyor::stages|conveyor::consume|"
                                      r"conveyor::dlq|conveyor::sources)"),
    ("file I/O (libc calls)", r"^(rename|__GI_unlink|__GI_mkdir|__libc_open64|statx|__GI_linkat|"
                              r"__libc_pwrite64|__libc_pread64|__GI_fsync|__GI___close|"
                              r"__GI_fdatasync|fsetxattr|removexattr)"),
]
# Read only when no rule above matches anywhere in the stack.
FALLBACK = [
    ("other kernel", r"\[kernel"),
    ("bytes, strings, other runtime", r"(bytes::|core::|alloc::|std::|tokio::)"),
]
COMPILED = [(name, re.compile(rx)) for name, rx in RULES]
FALLBACK_COMPILED = [(name, re.compile(rx)) for name, rx in FALLBACK]


def samples(lines):
    stack = []
    for line in lines:
        line = line.rstrip("\n")
        if not line.strip():
            if stack:
                yield stack
            stack = []
            continue
        if line.startswith("\t") or line.startswith(" "):
            parts = line.strip().split(" ", 1)
            if len(parts) == 2:
                sym = parts[1]
                stack.append(sym)
        else:
            stack = []
    if stack:
        yield stack


def classify(stack):
    for rules in (COMPILED, FALLBACK_COMPILED):
        for frame in stack:
            for name, rx in rules:
                if rx.search(frame):
                    return name
    return "unresolved"


def main():
    args = sys.argv[1:]
    drill = None
    if "--drill" in args:
        i = args.index("--drill")
        drill = args[i + 1]
        del args[i:i + 2]
    path, events = args[0], int(args[1])
    cpu = float(args[2]) if len(args) > 2 else None
    counts = Counter()
    callers = Counter()
    with open(path, errors="replace") as f:
        for stack in samples(f):
            # the dynamic loader and the start-up are not per-event work
            if any("_dl_start" in s for s in stack):
                continue
            name = classify(stack)
            counts[name] += 1
            if drill and name.startswith(drill):
                ours = [re.sub(r" \(.*", "", f) for f in stack if f.startswith("conveyor::")]
                callers[" < ".join(ours[:3]) or "(no conveyor frame)"] += 1
    if drill:
        n = sum(callers.values())
        print(f"{drill}: {n} samples, by the innermost conveyor frames")
        for who, k in callers.most_common(25):
            print(f"{k / n:6.1%}  {who[:200]}")
        return
    total = sum(counts.values())
    print(f"{total} samples" + (f", {cpu:.2f} CPU-s, {events} events, "
                                f"{cpu * 1e6 / events:.0f} µs CPU per event" if cpu else ""))
    print(f"{'component':36} {'share':>7} {'µs/event':>9}")
    for name, n in counts.most_common():
        share = n / total
        per = f"{share * cpu * 1e6 / events:9.1f}" if cpu else ""
        print(f"{name:36} {share:7.1%} {per}")


if __name__ == "__main__":
    main()
