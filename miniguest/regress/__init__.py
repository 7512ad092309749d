"""Regression testing of hypercall handling: traces, fault injection, snapshots, golden files, pytest.

Modules (each small, importable on its own):
  decoders      hypercall argument/result decoders for trace records (registry keyed by hypercall/sub-op)
  tracefile     reading, filtering, formatting and diffing trace files (JSON lines)
  perfetto      export to the Chrome/Perfetto trace-event JSON format
  faults        FaultInjector and the `--inject` rule language
  snapshot      snapshot/restore of a domain and its backends (docs/snapshot-format.md)
  golden        golden-trace comparison with an update mode
  pytest_plugin the `pytest11` plugin: fixtures to boot guests, XTF result mapping, --update-golden
  commands      the `miniguest trace ...` and `snapshot ...` subcommands, the `--inject`/`--maxmem` boot options
"""
