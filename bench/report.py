"""RESULTS.md and PNG plots from one bench run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bench.scenarios import summary


def write_report(results: dict[str, Any], here: Path) -> None:
    (here / "results.json").write_text(json.dumps(_without_samples(results), indent=1))
    _plot_lag(results, here / "lag_cdf.png")
    _plot_traffic(results, here / "traffic.png")
    write_sections(here / "RESULTS.md", _markdown(results))


def _sections(text: str) -> list[str]:
    """The file's head, then each `## ` section with its title line."""
    head, *rest = text.rstrip("\n").split("\n## ")
    return [head, *("## " + part for part in rest)]


def write_sections(path: Path, markdown: str) -> None:
    """Writes `markdown`'s head and sections into `path`, keeping the sections of the existing
    file that `markdown` does not have: other commands write those (bench.failover and
    bench.etcd_costs' "Ownership on etcd", bench.versions' "Dovecot 2.4 beside 2.3")."""
    def title(part: str) -> str:
        return part.split("\n", 1)[0]

    new = _sections(markdown)
    fresh = {title(part): part for part in new[1:]}
    old = _sections(path.read_text()) if path.exists() else [""]
    parts = [new[0] if new[0].strip() else old[0]]
    parts += [fresh.pop(title(part), part) for part in old[1:]]  # in place, in their order
    parts += fresh.values()
    path.write_text("\n\n".join(p.rstrip("\n") for p in parts) + "\n")


def _without_samples(results: dict[str, Any]) -> dict[str, Any]:
    slim = dict(results)
    slim["floors"] = {k: summary(v) for k, v in results["floors"].items()}
    slim["lag"] = [{**r, "samples": summary(r["samples"])} for r in results["lag"]]
    slim["append"] = [{**r, "samples": summary(r["samples"])} for r in results["append"]]
    return slim


def _plot_lag(results: dict[str, Any], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for run in results["lag"]:
        ordered = sorted(s * 1000 for s in run["samples"])
        ys = [(i + 1) / len(ordered) for i in range(len(ordered))]
        ax.plot(ordered, ys, label=f"{run['format']} {run['mode']}")
    for name in ("fdatasync_4k_disk",):
        p50 = summary(results["floors"][name])["p50_ms"]
        ax.axvline(p50, linestyle=":", color="grey")
        ax.annotate(f"{name} p50", (p50, 0.05), rotation=90, fontsize=8, color="grey")
    ax.set_xscale("log")
    ax.set_xlabel("flag STORE: origin file changed -> replica identical (ms)")
    ax.set_ylabel("fraction of samples")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_traffic(results: dict[str, Any], path: Path) -> None:
    runs = results["traffic"]
    labels = [f"{r['format']}{' churn' if r['churn'] else ''}" for r in runs]
    whole = [r["traffic"]["whole_file_bytes"] / 2**20 for r in runs]
    link = [r["link_bytes"] / 2**20 for r in runs]
    bodies = [r["body_bytes"] / 2**20 for r in runs]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    xs = range(len(runs))
    width = 0.27
    ax.bar([x - width for x in xs], whole, width, label="whole-file copier would send")
    ax.bar(list(xs), bodies, width, label="message bodies written (never sent)")
    ax.bar([x + width for x in xs], link, width, label="dovecot-replicator link bytes")
    ax.set_xticks(list(xs), labels)
    ax.set_ylabel("MiB")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        "# Benchmark results",
        "",
        f"Machine: {m['cpu']}, {m['cpus']} CPUs, Linux {m['kernel']}, Python {m['python']}, "
        f"Dovecot {m['dovecot']}; {m['date']}. Both nodes, both daemons and the IMAP client "
        "share this machine (loopback).",
        "",
        "Reproduce: `make bench` (or `.venv/bin/python -m bench.run`).",
        "",
        "## Floors, same run",
        "",
        "| what | n | p50 ms | p99 ms |",
        "|---|---|---|---|",
    ]
    for name, samples in results["floors"].items():
        s = summary(samples)
        lines.append(f"| {name} | {s['n']} | {s['p50_ms']:.3f} | {s['p99_ms']:.3f} |")
    lines += ["", "## Replication lag of one flag STORE", "",
              "Origin file changed (inotify on Dovecot's log) -> replica file byte-identical "
              "(inotify on the copy). *disk*: Dovecot's roots on disk, `mail_fsync = always`; "
              "*ram*: roots on tmpfs, `mail_fsync = never`.", "",
              "| format | mode | n | p50 ms | p99 ms | max ms | ack lag p50/p99 ms |",
              "|---|---|---|---|---|---|---|"]
    for run in results["lag"]:
        s, ack = summary(run["samples"]), run["ack_lag"]
        lines.append(f"| {run['format']} | {run['mode']} | {s['n']} | {s['p50_ms']:.3f} | "
                     f"{s['p99_ms']:.3f} | {s['max_ms']:.3f} | {ack['p50_ms']} / "
                     f"{ack['p99_ms']} |")
    lines += ["", "![lag CDF](lag_cdf.png)", "", "## Bytes on the wire for the seeded workload",
              "", "Wire ratio = link bytes / bytes a whole-file copier would send (the size of "
              "each changed file after each change).", "",
              "| format | churn | ops | body bytes | whole-file bytes | delta bytes | link bytes |"
              " wire ratio | batches | RSS a / b MiB |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["traffic"]:
        t = r["traffic"]
        lines.append(
            f"| {r['format']} | {r['churn']} | {r['ops']} | {r['body_bytes']} | "
            f"{t['whole_file_bytes']} | {t['op_bytes']} | {r['link_bytes']} | "
            f"{r['link_bytes'] / t['whole_file_bytes']:.3f} | {r['batches']} | "
            f"{r['rss_mib']['a']:.1f} / {r['rss_mib']['b']:.1f} |")
    lines += ["", "![traffic](traffic.png)", ""]
    lines += _append_section(results) + _promote_section(results)
    lines += ["## Hot path pieces (pytest-benchmark)", "",
              "| benchmark | median µs |", "|---|---|"]
    lines += [f"| {b['name']} | {b['median_us']:.1f} |" for b in results["micro"]]
    return "\n".join(lines) + "\n"


def _append_section(results: dict[str, Any]) -> list[str]:
    lines = ["## APPEND latency and sync commit", "",
             "An IMAP client's APPEND, sent to answer received (mdbox). *disk*: roots on disk, "
             "`mail_fsync = always`; *ram*: tmpfs, `mail_fsync = never`. With the plugin the "
             "answer waits until a peer acknowledged the change (`sync_quorum = 1`).", "",
             "| mode | plugin | links | n | p50 ms | p99 ms |", "|---|---|---|---|---|---|"]
    for r in results["append"]:
        s = summary(r["samples"])
        lines.append(f"| {r['mode']} | {'yes' if r['plugin'] else 'no'} | {r['links']} | "
                     f"{s['n']} | {s['p50_ms']:.3f} | {s['p99_ms']:.3f} |")
    by = {(r["mode"], r["plugin"], r["links"]): summary(r["samples"]) for r in results["append"]}
    lines.append("")
    for mode in ("disk", "ram"):
        off = by.get((mode, False, "1 peer, loopback"))
        on = by.get((mode, True, "1 peer, loopback"))
        if off and on:
            lines.append(f"- {mode}: the plugin adds {on['p50_ms'] - off['p50_ms']:.3f} ms at "
                         f"the median ({on['p50_ms'] / off['p50_ms']:.2f}x)")
    for r in results["append"]:
        phases = r.get("phases", {})
        if r["plugin"] and "netns" not in r["links"] and phases.get("capture", {}).get("p50_ms"):
            lines.append(f"- {r['mode']}, where a FLUSH waits (daemon's own timing, p50): "
                         f"reading and numbering the changes {phases['capture']['p50_ms']} ms, "
                         f"then the peer's round trip (send, apply, ack) "
                         f"{phases['replicate']['p50_ms']} ms")
    lossy = [summary(r["samples"]) for r in results["append"] if "netns" in r["links"]]
    if len(lossy) == 2:
        lines.append(f"- 2 % loss on one of two peer links: p99 {lossy[1]['p99_ms']:.3f} ms "
                     f"against {lossy[0]['p99_ms']:.3f} ms lossless "
                     f"({lossy[1]['p99_ms'] / lossy[0]['p99_ms']:.2f}x)")
    return [*lines, ""]


def _promote_section(results: dict[str, Any]) -> list[str]:
    lines = ["## Promote and verify at scale", "",
             "One message per mailbox (maildir), node a killed after replication, then on "
             "node b `verify --local` (the RAM copy against its digest journal) and `promote` "
             "(copy with the UID gap written in and every file checked as `verify --local` "
             "does, fence, sync, rename), into roots on tmpfs, then into b's roots on disk. "
             "Beside each, a `tar` pipe copying the same files there, then syncfs: the "
             "filesystem's own floor for making them, in the same run.",
             "", "| mailboxes | files | verify s | bytes verify read | promote s (disk) | "
             "copy+check s | sync s | rename s | tar copy s (disk) | promote s (tmpfs, median of "
             "3) | tar copy s (tmpfs) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["promote"]:
        st, ram = r["steps"], r["ram"]
        lines.append(f"| {r['mailboxes']} | {r['verify_files']} | {r['verify_inner_s']:.3f} | "
                     f"{r['verify_bytes']} | {r['promote_inner_s']:.3f} | "
                     f"{st.get('copy', 0):.3f} | {st.get('sync', 0):.3f} | "
                     f"{st.get('rename', 0):.3f} | {r['floor_s']:.3f} | "
                     f"{ram['promote_inner_s']:.3f} | {ram['floor_s']:.3f} |")
    return [*lines, ""]
