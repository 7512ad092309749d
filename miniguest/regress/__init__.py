"""Regression testing of hypercall handling: traces, fault injection, snapshots, golden files, pytest.

Modules (each small, importable on its own):
  trace_files   reading, filtering, formatting and diffing trace files (JSON lines); the records
                themselves are debug/tracer.py's, their live printer debug/trace_printer.py
  perfetto      export to the Chrome/Perfetto trace-event JSON format
  faults        FaultInjector and the `--inject` rule language
  snapshot      snapshot/restore of a domain and its backends (docs/snapshot-format.md)
  golden        golden-trace comparison with an update mode
  pytest_plugin the `pytest11` plugin: fixtures to boot guests, XTF result mapping, --update-golden
  normalise     golden traces in a normal form (pointers and call sites by name)
  resources     resource accounting of a run
(The hypercall decoders that fill trace records' in/out live with each family's sub-op table in the
hypervisor; the `miniguest trace ...` and `snapshot ...` commands in cli/regress_commands.py.)
"""
