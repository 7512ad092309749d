"""The miniguest pytest plugin, exercised the way a user's project would use it: small test files run by
pytest in a temporary directory (pytester)."""
from __future__ import annotations

import shutil

import pytest
from regresslib import HELLO, SELFTEST

from miniguest.regress.pytest_plugin import xtf_result

GOLDEN_TEST = f'''
def test_hello(boot_guest, golden):
    run = boot_guest({HELLO!r})
    assert run.state == "shutdown" and run.shutdown_reason == "poweroff"
    assert "7/7 checks passed" in run.console
    assert run.store.read("/local/domain/1/name") == b"hello"
    golden.check("hello", run)
'''


@pytest.mark.slow
def test_golden_update_then_compare_then_divergence(pytester):
    pytester.makepyfile(test_user_golden=GOLDEN_TEST)
    result = pytester.runpytest("-q")
    result.assert_outcomes(failed=1)                           # no golden file yet
    result.stdout.fnmatch_lines(["*no golden trace*--update-golden*"])
    pytester.runpytest("-q", "--update-golden").assert_outcomes(passed=1)
    golden = pytester.path / "tests" / "golden" / "hello.jsonl"
    assert golden.exists() and '"image":"hello.elf"' in golden.read_text().splitlines()[0]
    pytester.runpytest("-q").assert_outcomes(passed=1)
    lines = golden.read_text().splitlines()
    lines[3] = lines[3].replace('"result":262163', '"result":262162')
    golden.write_text("\n".join(lines) + "\n")
    result = pytester.runpytest("-q")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*traces differ at record 3 (fields: result)*", "*xen_version(version)*"])


@pytest.mark.slow
def test_golden_dir_is_configurable(pytester):
    pytester.makeini("[pytest]\nminiguest_golden_dir = goldens\n")
    pytester.makepyfile(test_user_golden=GOLDEN_TEST)
    pytester.runpytest("-q", "--update-golden").assert_outcomes(passed=1)
    assert (pytester.path / "goldens" / "hello.jsonl").exists()


@pytest.mark.slow
def test_xtf_results_map_to_pytest_outcomes(pytester):
    pytester.makepyfile(test_user_xtf=f'''
import pytest

@pytest.mark.xtf({SELFTEST!r}, cmdline="xtf SUCCESS warn")
def test_success(xtf_run):
    assert xtf_run.xtf_result == "SUCCESS"

@pytest.mark.xtf({SELFTEST!r}, cmdline="xtf SKIP")
def test_skip(xtf_run):
    raise AssertionError("not reached")

@pytest.mark.xtf({SELFTEST!r}, cmdline="xtf FAILURE")
def test_failure(xtf_run):
    pass

@pytest.mark.xtf({SELFTEST!r}, cmdline="xtf ERROR")
def test_error(xtf_run):
    pass

@pytest.mark.xtf({SELFTEST!r}, cmdline="crash")
def test_crash(xtf_run):
    pass
''')
    result = pytester.runpytest("-q", "-rA")
    result.assert_outcomes(passed=1, skipped=1, failed=1, errors=2)
    result.stdout.fnmatch_lines(["*XTF: FAILURE*", "*XtfError: XTF: ERROR*", "*XtfError: XTF: CRASH*crash*"])


@pytest.mark.slow
def test_xtf_binaries_are_collected_with_the_option(pytester):
    shutil.copy(SELFTEST, pytester.path / "test-pv64-selftest")
    pytester.runpytest("-q").assert_outcomes()                # not collected without --xtf
    result = pytester.runpytest("-q", "--xtf")
    result.assert_outcomes(errors=1)                          # no scenario: no "Test result:" line, a CRASH
    result.stdout.fnmatch_lines(["*XTF: CRASH (test-pv64-selftest*"])


@pytest.mark.slow
def test_collected_xtf_tests_have_an_instruction_budget(pytester):
    shutil.copy(SELFTEST, pytester.path / "test-pv64-selftest")
    result = pytester.runpytest("-q", "--xtf", "--xtf-budget", "1000")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*XTF: CRASH (test-pv64-selftest, domain budget*"])


@pytest.mark.parametrize("text,want", [
    ("Test result: SUCCESS\n", "SUCCESS"),
    ("x\nTest result: SUCCESS with warnings\r\n\n", "SUCCESS"),
    ("Test result: FAILURE\nsomething after it\n", "CRASH"),          # xtf-runner reads the final line
    ("", "CRASH"),
    ("Test result: BOGUS\n", "CRASH"),
])
def test_xtf_result_reads_the_final_line(text, want):
    assert xtf_result(text) == want


@pytest.mark.slow
def test_xtf_variations_run_once_per_configuration_file(pytester):
    """As XTF installs pv-iopl: the binary plus test-pv64-pv-iopl~hypercall.cfg and ~vmassist.cfg, each with
    the command line of its variation; xtf-runner runs each configuration, never the bare binary."""
    shutil.copy(SELFTEST, pytester.path / "test-pv64-fake")
    cfg = ('name="test-pv64-fake{v}"\ntype="pv"\nmemory=128\n'
           'kernel="/usr/libexec/xtf/tests/fake/test-pv64-fake"\n# Test Variation Configuration:\n{extra}\n')
    (pytester.path / "test-pv64-fake~ok.cfg").write_text(cfg.format(v="~ok", extra='cmdline="xtf SUCCESS"'))
    (pytester.path / "test-pv64-fake~skip.cfg").write_text(cfg.format(v="~skip", extra='extra="xtf SKIP"'))
    (pytester.path / "test-pv64-fake~smp.cfg").write_text(cfg.format(v="~smp", extra='cmdline="xtf SUCCESS"\n'
                                                                                     "vcpus=2"))
    result = pytester.runpytest("-q", "--xtf", "-rs", "-W", "always")
    result.assert_outcomes(passed=2, skipped=1)
    result.stdout.fnmatch_lines(["*test-pv64-fake~smp.cfg: vcpus=2: miniguest runs one vCPU*"])
    result.stdout.fnmatch_lines(["*SKIP*XTF: SKIP (test-pv64-fake)*"])
    ids = pytester.runpytest("-q", "--xtf", "--collect-only")
    ids.stdout.fnmatch_lines(["*test-pv64-fake::test-pv64-fake~ok", "*test-pv64-fake::test-pv64-fake~skip",
                              "*test-pv64-fake::test-pv64-fake~smp"])

