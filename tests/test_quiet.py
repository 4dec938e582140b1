"""The command line's stderr filter: TensorFlow's start-up notices go, everything else stays."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from fashion_keras import cli, quiet

from conftest import run_cli

SMALL = ["training.epochs=1", "data.train_limit=200", "data.eval_limit=100"]  # ~15 s of training

# One line of each known notice, as TensorFlow 2.16 to 2.21 print them on CPU or GPU machines.
NOISE = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1796131277.786467    7710 cudart_stub.cc:31] Could not find cuda drivers on "
    "your machine, GPU will not be used.",
    "E0000 00:00:1796131284.932486    7710 cuda_platform.cc:52] failed call to cuInit: "
    "INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)",
    "2024-03-08 10:00:00.123456: E external/local_xla/xla/stream_executor/cuda/cuda_driver.cc:282]"
    " failed call to cuInit: CUDA_ERROR_NO_DEVICE: no CUDA-capable device is detected",
    "I0000 00:00:1796131277.786467    7710 cpu_feature_guard.cc:210] This TensorFlow binary is "
    "optimized to use available CPU instructions in performance-critical operations.",
    "To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow "
    "with the appropriate compiler flags.",
    "2024-03-08 10:00:00.123456: I tensorflow/core/util/port.cc:113] oneDNN custom operations "
    "are on. You may see slightly different numerical results due to floating-point round-off "
    "errors from different computation orders. To turn them off, set the environment variable "
    "`TF_ENABLE_ONEDNN_OPTS=0`.",
    "E0000 00:00:1796131277.786467    7710 cuda_dnn.cc:8310] Unable to register cuDNN factory: "
    "Attempting to register factory for plugin cuDNN when one has already been registered",
    "E0000 00:00:1796131277.786467    7710 cuda_fft.cc:485] Unable to register cuFFT factory: "
    "Attempting to register factory for plugin cuFFT when one has already been registered",
    "E0000 00:00:1796131277.786467    7710 cuda_blas.cc:1418] Unable to register cuBLAS factory: "
    "Attempting to register factory for plugin cuBLAS when one has already been registered",
    "2024-03-08 10:00:00.123456: W tensorflow/compiler/tf2tensorrt/utils/py_utils.cc:38] "
    "TF-TRT Warning: Could not find TensorRT",
    "W0000 00:00:1796131277.786467    7710 computation_placer.cc:177] computation placer already "
    "registered. Please check linkage and avoid linking the same target more than once.",
]

# Lines that must pass: a real TensorFlow error, Python warnings and tracebacks, our own errors,
# and lines that only quote a noise message.
KEPT = [
    "E0000 00:00:1796131284.932486    7710 op_kernel.cc:1840] OP_REQUIRES failed at "
    "save_restore_v2_ops.cc:216 : NOT_FOUND: runs/x/model.weights.h5; No such file",
    "/work/main/src/fashion_keras/train.py:42: UserWarning: the learning rate looks very high",
    "Traceback (most recent call last):",
    '  File "/work/main/src/fashion_keras/cli.py", line 282, in main',
    "RuntimeError: failed call to cuInit: a test of a line without absl's prefix",
    "fashion-keras: error: seed must be a whole number from 0 to 4294967295 (2**32 - 1).",
]


def test_is_noise_drops_each_known_notice_and_keeps_the_rest_in_order():
    mixed = NOISE[:6] + KEPT[:3] + NOISE[6:] + KEPT[3:]
    assert [line for line in mixed if not quiet.is_noise(line)] == KEPT


# A child process: filters its own fd 2 with install(), writes `KEPT` and `NOISE` through C-level
# os.write and through sys.stderr, far more than a pipe holds, then ends in the way asked.
RELAY = textwrap.dedent(
    """
    import os, sys
    from fashion_keras import quiet

    noise, kept, ending = {noise!r}, {kept!r}, sys.argv[1]
    assert quiet.install()
    for i in range(4000):  # about 1 MB: a relay that stopped draining would block here
        os.write(2, (noise[i % len(noise)] + "\\n").encode())
        if i % 1000 == 0:
            print(kept[i // 1000], file=sys.stderr)
    os.write(2, "\\n".join(noise + kept).encode() + b"\\n")
    sys.stderr.write("a last line without its newline")
    if ending == "uninstall":
        quiet.uninstall()
        print("after uninstall", file=sys.stderr)
    elif ending == "exit":
        sys.exit(3)
    elif ending == "raise":
        raise RuntimeError("a real failure")
    """
).format(noise=NOISE, kept=KEPT)


@pytest.mark.parametrize(
    "ending, status, rest",
    [
        ("uninstall", 0, "after uninstall\n"),
        ("return", 0, ""),
        ("exit", 3, ""),
        ("raise", 1, "Traceback (most recent call last):\n"),
    ],
)
def test_the_relay_keeps_every_real_line_in_order_however_the_process_ends(ending, status, rest):
    result = subprocess.run(
        [sys.executable, "-c", RELAY, ending], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == status, result.stderr[-2000:]
    kept = "\n".join(KEPT[:4] + KEPT) + "\na last line without its newline"
    assert result.stderr.startswith(kept)
    assert result.stderr[len(kept) :].startswith(rest)
    if ending == "raise":
        assert result.stderr.endswith("\nRuntimeError: a real failure\n")
    else:
        assert result.stderr[len(kept) :] == rest
    assert not [line for line in result.stderr.splitlines() if quiet.is_noise(line)]


def test_installs_nothing_where_fd_2_is_closed():
    code = "import os; from fashion_keras import quiet; os.close(2); print(quiet.install())"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout == "False\n"


def test_main_called_with_arguments_leaves_fd_2_alone(monkeypatch):
    before = os.fstat(2)
    monkeypatch.setattr(quiet, "install", lambda: pytest.fail("main(argv) installed the filter"))
    for name, value in {"MPLBACKEND": "Agg", "TF_CPP_MIN_LOG_LEVEL": "2"}.items():
        monkeypatch.setenv(name, os.environ.get(name, value))  # main() sets them; undo after
    monkeypatch.setattr(signal, "signal", lambda *args: None)  # and leave pytest's SIGTERM
    assert cli.main(["presets"]) == 0
    after = os.fstat(2)
    assert (after.st_dev, after.st_ino) == (before.st_dev, before.st_ino)


@pytest.mark.parametrize(
    "argv, env, installs",
    [
        (["presets"], "", True),
        (["presets"], "0", True),
        (["--verbose", "presets"], "", False),
        (["presets"], "1", False),
    ],
)
def test_the_command_filters_unless_asked_to_be_verbose(monkeypatch, argv, env, installs):
    calls = []
    monkeypatch.setattr(quiet, "install", lambda: calls.append("install"))  # returns None
    for name, value in {"MPLBACKEND": "Agg", "TF_CPP_MIN_LOG_LEVEL": "2"}.items():
        monkeypatch.setenv(name, os.environ.get(name, value))  # main() sets them; undo after
    monkeypatch.setattr(signal, "signal", lambda *args: None)  # and leave pytest's SIGTERM
    monkeypatch.setattr(sys, "argv", ["fashion-keras", *argv])
    monkeypatch.setenv("FASHION_KERAS_VERBOSE", env)
    assert cli.main() == 0
    assert calls == (["install"] if installs else [])


def _train(output, verbose):
    args = ["train", "--config", "baseline", *[f"--set={s}" for s in SMALL], "--output", output]
    return run_cli(*args, env={"FASHION_KERAS_VERBOSE": verbose})


@pytest.mark.long  # for its time: make test-long runs it, make test does not
@pytest.mark.slow
def test_the_command_hides_tensorflow_start_up_notices_unless_verbose(tmp_path):
    quiet_run = _train(tmp_path / "quiet", "0")
    assert quiet_run.returncode == 0, quiet_run.stderr
    assert '"test_accuracy"' in quiet_run.stdout
    for notice in ("cuInit", "absl::InitializeLog", "cudart_stub"):
        assert notice not in quiet_run.stderr

    loud = _train(tmp_path / "loud", "1")
    assert loud.returncode == 0, loud.stderr
    # What TensorFlow 2.17+ prints on every machine, once absl logs before it is initialised.
    assert "absl::InitializeLog" in loud.stderr
    assert [line for line in loud.stderr.splitlines() if quiet.is_noise(line)]


def test_a_user_mistake_still_prints_its_one_line():
    result = run_cli("train", "--config", "baseline", "--set", "seed=-1")
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert line.startswith("fashion-keras: error: seed must be")
