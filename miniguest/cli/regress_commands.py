"""`miniguest trace record|show|diff|export` and the `--inject RULE` boot option (a cli feature module).

    miniguest trace record IMAGE -o run.jsonl [--normalise] [--perfetto run.json] [boot options, --inject ...]
    miniguest trace show run.jsonl [--kind K] [--name N] [--json]
    miniguest trace diff a.jsonl b.jsonl [--context N] [--ignore FIELD]   exit 0 equal, 1 different
    miniguest trace export run.jsonl -o run.json                          Chrome/Perfetto trace-event JSON
    miniguest snapshot save IMAGE -o boot.snap (--at-ns T | --after-hypercalls N) [boot options]
    miniguest snapshot info boot.snap
    miniguest snapshot run boot.snap [--trace run.jsonl] [--inject RULE ...]   (exit status as boot)

`trace record` boots like `miniguest boot` (same options, same exit status) and writes every record as it
happens, so a guest that crashes or hangs still leaves its trace behind.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from miniguest.cli.boot import DomainOptions, natural, report_end, run_guest
from miniguest.cli.boot import error as _err
from miniguest.debug.tracer import Tracer, TraceRecord, header_line
from miniguest.regress import perfetto
from miniguest.regress.faults import FaultInjector, RuleError, parse_rule
from miniguest.regress.normalise import AddressNames, is_normalised, normalise_record, normalised_meta
from miniguest.regress.snapshot import PauseAfterHypercalls, Snapshot, SnapshotError, save_snapshot
from miniguest.regress.trace_files import (TraceFileError, diff, format_divergence, format_record, image_meta, load,
                                           select)
from miniguest.toolstack.exit_status import EXIT_BAD_IMAGE, EXIT_ERROR
from miniguest.toolstack.libelf import ImageError
from miniguest.toolstack.libxl import Guest
from miniguest.toolstack.xlcfg import ConfigError

EXIT_DIFFERENT = 1
EXIT_TROUBLE = 2


def _rule(text: str) -> str:
    try:
        parse_rule(text)
    except RuleError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def add_domain_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--inject", action="append", type=_rule, metavar="RULE", default=[],
                        help="fault injection, e.g. hypercall:event_channel_op:bind_virq:-ENOSPC@1, "
                             "event:drop:port=3@2, xenstore:read:ENOENT@1 (repeatable)")


def configure_domain(domain: Guest, args: argparse.Namespace) -> None:
    rules = getattr(args, "inject", None)
    if rules:
        FaultInjector(rules).attach(domain)          # fresh counters for every (re)started domain


def register(subparsers: Any, options: DomainOptions) -> None:
    p = subparsers.add_parser("trace", help="record, show, compare and export traces of hypercall handling")
    sub = p.add_subparsers(dest="trace_command", required=True)
    rec = sub.add_parser("record", help="boot a guest and record its trace (boot options apply)")
    options.add(rec)
    rec.add_argument("-o", "--output", required=True, metavar="FILE", help="trace file (JSON lines)")
    rec.add_argument("--perfetto", metavar="FILE", help="also write a Chrome/Perfetto trace-event JSON file")
    rec.add_argument("--kinds", metavar="K,K", help="record only these kinds (default: all)")
    rec.add_argument("--no-decode", action="store_true", help="do not decode hypercall argument structs")
    rec.add_argument("--normalise", "--normalize", action="store_true",
                     help="write the normal form of golden files: pointers and call sites by symbol, no raw "
                          "addresses or image hash (compare with tests/golden/*.jsonl)")
    rec.set_defaults(func=cmd_record, domain_options=options)
    show = sub.add_parser("show", help="print a trace, one line per record")
    show.add_argument("trace")
    show.add_argument("--kind", action="append", default=[], help="only records of this kind (repeatable)")
    show.add_argument("--name", action="append", default=[],
                      help="only records with this name: hypercall, name(subop), sub-op, xenstore type, ...")
    show.add_argument("--json", action="store_true", help="print the records as JSON lines")
    show.set_defaults(func=cmd_show)
    d = sub.add_parser("diff", help="first divergence of two traces (exit 1 if they differ)")
    d.add_argument("a")
    d.add_argument("b")
    d.add_argument("--context", type=natural, default=3, metavar="N",
                   help="records of context (default 3)")
    d.add_argument("--ignore", action="append", default=[], metavar="FIELD",
                   help="ignore this field, e.g. time or caller (repeatable)")
    d.set_defaults(func=cmd_diff)
    ex = sub.add_parser("export", help="convert a trace to Chrome/Perfetto trace-event JSON")
    ex.add_argument("trace")
    ex.add_argument("-o", "--output", required=True, metavar="FILE")
    ex.set_defaults(func=cmd_export)
    _register_snapshot(subparsers, options)


def _register_snapshot(subparsers: Any, options: DomainOptions) -> None:
    p = subparsers.add_parser("snapshot", help="save a domain at a point, restore and run it (variations)")
    sub = p.add_subparsers(dest="snapshot_command", required=True)
    save = sub.add_parser("save", help="boot a guest, stop it at a point and save a snapshot")
    options.add(save)
    save.add_argument("-o", "--output", required=True, metavar="FILE")
    at = save.add_mutually_exclusive_group(required=True)
    at.add_argument("--at-ns", type=natural, metavar="T", help="stop once virtual time reaches T ns")
    at.add_argument("--after-hypercalls", type=natural, metavar="N",
                    help="stop right after the N-th hypercall")
    save.set_defaults(func=cmd_snapshot_save, domain_options=options)
    info = sub.add_parser("info", help="what a snapshot holds")
    info.add_argument("snapshot")
    info.set_defaults(func=cmd_snapshot_info)
    run = sub.add_parser("run", help="restore a snapshot and run it to its end (exit status as boot)")
    run.add_argument("snapshot")
    run.add_argument("--trace", metavar="FILE", help="record the trace from the restore point on")
    run.add_argument("--perfetto", metavar="FILE", help="also write a Chrome/Perfetto trace-event JSON file")
    run.add_argument("--inject", action="append", type=_rule, metavar="RULE", default=[],
                     help="fault injection rule (repeatable), as for boot")
    run.add_argument("--quiet", action="store_true", help="do not copy the guest console to the terminal")
    run.add_argument("--max-insns", type=natural, metavar="N",
                     help="instruction budget (total, as at boot)")
    run.set_defaults(func=cmd_snapshot_run)


def cmd_record(args: argparse.Namespace) -> int:
    """`trace record`: `boot` (console, --console-log, --stdin, --ready-file, signals, exit status) with a
    tracer writing every record as it happens."""
    try:
        out = open(args.output, "w", encoding="utf-8")
    except OSError as e:
        _err(f"{args.output}: {e.strerror}")
        return EXIT_ERROR
    kinds = [k.strip() for k in args.kinds.split(",")] if args.kinds else None
    trouble: list[int] = []

    def prepare(dom: Any, kernel: str):
        meta = image_meta(kernel, dom, args.inject)
        names = None
        if args.normalise:
            names = AddressNames.from_domain(dom)
            meta = normalised_meta(meta)

        def write(rec: TraceRecord) -> None:
            out.write((normalise_record(rec, names) if names is not None else rec).to_json() + "\n")

        out.write(header_line(meta) + "\n")
        tracer = Tracer(dom, kinds=kinds, sink=write, keep=bool(args.perfetto), decode=not args.no_decode)
        tracer.attach()

        def finish(dom: Any, state: str) -> None:
            tracer.detach()
            out.flush()
            if args.perfetto:
                try:
                    perfetto.write(tracer.records, args.perfetto, meta)
                except OSError as e:
                    _err(f"{args.perfetto}: {e.strerror}")
                    trouble.append(EXIT_ERROR)
        return finish

    with out:
        code = run_guest(args, prepare, restart=False)
    return code or (trouble[0] if trouble else 0)


def _load(path: str):
    try:
        return load(path)
    except TraceFileError as e:
        _err(str(e))
        return None


def cmd_show(args: argparse.Namespace) -> int:
    tf = _load(args.trace)
    if tf is None:
        return EXIT_TROUBLE
    try:
        for rec in select(tf.records, args.kind, args.name):
            print(rec.to_json() if args.json else format_record(rec))
    except BrokenPipeError:
        pass
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    a = _load(args.a)
    b = _load(args.b)
    if a is None or b is None:
        return EXIT_TROUBLE
    if is_normalised(a.meta) != is_normalised(b.meta):
        norm, raw = (args.a, args.b) if is_normalised(a.meta) else (args.b, args.a)
        _err(f"{norm} is a normalised trace (a golden) and {raw} is not: record it with "
             "`miniguest trace record --normalise`")
        return EXIT_TROUBLE
    div = diff(a.records, b.records, context=max(0, args.context), ignore=args.ignore)
    if div is None:
        print(f"traces are identical ({len(a.records)} records)")
        return 0
    print(format_divergence(div, args.a, args.b))
    return EXIT_DIFFERENT


def cmd_export(args: argparse.Namespace) -> int:
    tf = _load(args.trace)
    if tf is None:
        return EXIT_TROUBLE
    try:
        perfetto.write(tf.records, args.output, tf.meta)
    except OSError as e:
        _err(f"{args.output}: {e.strerror}")
        return EXIT_TROUBLE
    return 0


def cmd_snapshot_save(args: argparse.Namespace) -> int:
    try:
        dom, _, _, _ = args.domain_options.build(args, [] if args.quiet else [_to_terminal])
    except (ImageError, ConfigError) as e:
        _err(str(e))
        return EXIT_BAD_IMAGE if isinstance(e, ImageError) else EXIT_ERROR
    if args.after_hypercalls is not None:
        dom.hypercall_observers.append(PauseAfterHypercalls(args.after_hypercalls))
        state = dom.run()
    else:
        state = dom.run(until=lambda d: d.clock.now_ns() >= args.at_ns)
    if state != "paused":
        _err(f"note: the domain ended ({state}) before the requested point; saving its final state")
    try:
        save_snapshot(dom, args.output)
    except SnapshotError as e:
        _err(str(e))
        return EXIT_ERROR
    finally:
        dom.close()
    _err(f"snapshot of domain {dom.name} at {dom.clock.now_ns()} ns saved to {args.output}")
    return 0


def cmd_snapshot_info(args: argparse.Namespace) -> int:
    try:
        info = Snapshot.load(args.snapshot).info()
    except SnapshotError as e:
        _err(str(e))
        return 1
    for key, value in info.items():
        print(f"{key:10} {value}")
    return 0


def _to_terminal(data: bytes) -> None:
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def cmd_snapshot_run(args: argparse.Namespace) -> int:
    try:
        snap = Snapshot.load(args.snapshot)
        info = snap.info()
        options = {} if args.max_insns is None else {"max_instructions": args.max_insns}
        dom = snap.restore(console_output=None if args.quiet else _to_terminal, **options)
    except SnapshotError as e:
        _err(str(e))
        return EXIT_ERROR
    if args.inject:
        FaultInjector(args.inject).attach(dom)
    out = None
    tracer = None
    if args.trace or args.perfetto:
        meta = dict(info, snapshot=os.path.basename(args.snapshot))
        if args.inject:
            meta["inject"] = list(args.inject)
        if args.trace:
            try:
                out = open(args.trace, "w", encoding="utf-8")
            except OSError as e:
                _err(f"{args.trace}: {e.strerror}")
                dom.close()
                return EXIT_ERROR
            out.write(header_line(meta) + "\n")
        tracer = Tracer(dom, sink=(lambda rec: out.write(rec.to_json() + "\n")) if out else None,
                        keep=bool(args.perfetto)).attach()
    try:
        state = dom.run()
    except KeyboardInterrupt:
        state = "stopped"
    finally:
        if out is not None:
            out.close()
    code = report_end(dom, state)
    if args.perfetto and tracer is not None:
        try:
            perfetto.write(tracer.records, args.perfetto, meta)
        except OSError as e:
            _err(f"{args.perfetto}: {e.strerror}")
            code = code or EXIT_ERROR
    dom.close()
    return code
