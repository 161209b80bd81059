"""The CPU kernel probe (ferlab.probe): a crashing kernel is caught in a child, oneDNN is turned
off when that helps, bf16 is chosen only where measured faster, outcomes are cached.

A crashing kernel is faked by a child that kills itself with SIGSEGV after writing the probe's
marker, so every branch runs on any CPU; the registry-wide test runs the real child.
"""

from __future__ import annotations

import importlib
import json
import sys
import threading
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import yaml

from ferlab import probe
from ferlab.config import RuntimeConfig
from ferlab.evaluation.tta import predict_all
from ferlab.layout import FIT_JSON
from ferlab.models import ModelMeta, create_model, ferlab_models, load_model
from ferlab.probe import KernelCrashError, probe_cpu_kernels
from training_fakes import quiet_fit, tcfg, toy_dataset

REPO = Path(__file__).resolve().parents[1]
REAL_BUSY = probe._machine_busy  # the autouse fixture below stands a quiet machine in
OP = "backward of blocks.0.residual.0 Conv2d(8, 16, kernel_size=(1, 1), stride=(2, 2))"
FAKE_CHILD = """
import json, os, signal, sys
spec = json.loads(sys.argv[1])
mark = {mark!r}
crash = {crash!r}
def say(text):
    print(mark + text, file=sys.stderr, flush=True)
say("phase fp32")
say({op!r})
if crash == "always" or (crash == "onednn" and spec["onednn"]):
    os.kill(os.getpid(), signal.SIGSEGV)
if spec["time_batch"]:
    say("phase bf16")
    if crash == "bf16":
        os.kill(os.getpid(), signal.SIGSEGV)
print(json.dumps({{"ok": True, "timings": {timings!r} if spec["time_batch"] else {{}}}}))
"""


def fake_child(monkeypatch: pytest.MonkeyPatch, crash: str = "", timings=None) -> list[dict]:
    """Stand a fake child in for the real one; returns the specs it was started with."""
    calls: list[dict] = []
    code = FAKE_CHILD.format(mark=probe.MARK, crash=crash, op=OP, timings=timings or {})

    def argv(spec: dict) -> list[str]:
        calls.append(spec)
        return [sys.executable, "-c", code, json.dumps(spec)]

    monkeypatch.setattr(probe, "_child_argv", argv)
    return calls


def speeds(fp32: float, bf16: float) -> dict[str, float]:
    return {"fp32_step_s": fp32, "bf16_step_s": bf16, "fp32_forward_s": 1.0, "bf16_forward_s": 0.5}


def kernels(tmp_path: Path, **kw):
    args = dict(
        num_classes=7, in_chans=1, image_size=48, batch_size=64, last_batch=37, threads=1,
        cache_dir=tmp_path / "cache", log=lambda s: None,
    )  # fmt: skip
    return probe_cpu_kernels("ferlab_mini_xception", **{**args, **kw})


@pytest.fixture(autouse=True)
def quiet_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """The probe's timings count as the machine's own whatever else runs beside the tests."""
    monkeypatch.setattr(probe, "_machine_busy", lambda: None)


@pytest.fixture
def no_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(probe, "cpu_flags", lambda: ["avx2", "avx512f", "fma"])


@pytest.fixture
def bf16_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(probe, "cpu_flags", lambda: ["avx2", "avx512f", "avx512_bf16"])


def test_a_crashing_probe_is_retried_without_onednn_and_the_outcome_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_bf16: None
) -> None:
    calls = fake_child(monkeypatch, crash="onednn")
    said: list[str] = []
    got = kernels(tmp_path, log=said.append)
    assert [c["onednn"] for c in calls] == [True, False]
    assert got.onednn is False and got.precision == "32"
    assert got.crash == f"{OP} (SIGSEGV)"
    assert got.notes()[0] == f"oneDNN disabled: it crashed on this CPU in {OP} (SIGSEGV)"
    assert any("SIGSEGV" in s and "oneDNN off" in s for s in said)
    # The steps cover the small odd batch, the batch size and the last partial batch.
    assert calls[0]["batch_sizes"] == [probe.ODD_BATCH, 64, 37]

    again = kernels(tmp_path)  # cached: no child
    assert len(calls) == 2 and again.cached and again.onednn is False and again.crash == got.crash
    # Another geometry is another probe.
    kernels(tmp_path, image_size=40)
    assert len(calls) == 4


def test_a_step_that_crashes_with_and_without_onednn_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_bf16: None
) -> None:
    fake_child(monkeypatch, crash="always")
    with pytest.raises(KernelCrashError) as err:
        kernels(tmp_path)
    text = str(err.value)
    assert "ferlab_mini_xception" in text and "SIGSEGV" in text and OP in text
    assert probe.cpu_model() in text and torch.__version__ in text
    assert not list((tmp_path / "cache").glob("probes/*.json"))  # nothing cached


def test_forced_settings_run_no_probe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bf16_cpu: None
) -> None:
    calls = fake_child(monkeypatch, crash="always")
    off = kernels(tmp_path, onednn="off", precision="32")
    assert (off.onednn, off.precision, off.probed) == (False, "32", False)
    assert off.notes()[0] == "oneDNN disabled: runtime.onednn"
    on = kernels(tmp_path, onednn="on", precision="bf16-mixed")
    assert (on.onednn, on.precision, on.probed) == (True, "bf16-mixed", False)
    assert calls == []
    with pytest.raises(ValueError, match=r"runtime\.onednn"):
        kernels(tmp_path, onednn="maybe")


def test_bf16_is_chosen_only_where_measured_faster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bf16_cpu: None
) -> None:
    calls = fake_child(monkeypatch, timings=speeds(fp32=0.15, bf16=0.1))  # 1.5x
    fast = kernels(tmp_path / "a")
    assert calls[0]["time_batch"] == 64
    assert (fast.precision, fast.bf16_speedup, fast.bf16_infer_speedup) == ("bf16-mixed", 1.5, 2.0)
    assert "1.50x faster" in fast.reason

    fake_child(monkeypatch, timings=speeds(fp32=0.11, bf16=0.1))  # 1.1x: not worth it
    slow = kernels(tmp_path / "b")
    assert (slow.precision, slow.bf16_speedup) == ("32", 1.1)
    assert "below 1.2x" in slow.reason

    # precision forced: oneDNN is still probed, nothing is timed
    calls = fake_child(monkeypatch, timings=speeds(fp32=0.15, bf16=0.1))
    forced = kernels(tmp_path / "c", precision="32")
    assert calls[0]["time_batch"] == 0 and forced.precision == "32" and forced.probed


def test_a_cpu_without_native_bf16_is_not_timed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_bf16: None
) -> None:
    calls = fake_child(monkeypatch, timings=speeds(fp32=0.5, bf16=0.1))
    got = kernels(tmp_path)
    assert calls[0]["time_batch"] == 0
    assert got.precision == "32" and got.bf16_speedup is None and "no native bf16" in got.reason
    assert probe.native_bf16(["avx512f", "amx_bf16"]) and not probe.native_bf16(["avx2"])


def test_a_bf16_crash_keeps_onednn_and_fp32(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bf16_cpu: None
) -> None:
    calls = fake_child(monkeypatch, crash="bf16", timings=speeds(0.2, 0.1))
    got = kernels(tmp_path)
    assert len(calls) == 1 and got.onednn and got.precision == "32"
    assert "bf16 crashed the probe (SIGSEGV" in got.reason


class OneDNNSpy(pl.Callback):
    """Whether oneDNN was on at every training step."""

    def __init__(self) -> None:
        self.seen: set[bool] = set()

    def on_train_batch_start(self, *args, **kwargs) -> None:
        self.seen.add(bool(torch._C._get_mkldnn_enabled()))


@pytest.mark.kernel_probe
def test_fit_after_a_crashing_probe_trains_without_onednn_and_records_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_bf16: None
) -> None:
    fake_child(monkeypatch, crash="onednn")
    said: list[str] = []
    spy = OneDNNSpy()
    before = torch._C._get_mkldnn_enabled()
    res = quiet_fit(
        toy_dataset(), tcfg(epochs=1), tmp_path / "run", callbacks=[spy],
        cache_dir=tmp_path / "cache", log=said.append,
    )  # fmt: skip
    assert spy.seen == {False}  # every step ran with oneDNN off
    assert torch._C._get_mkldnn_enabled() == before  # and the switch is restored after
    rec = json.loads((tmp_path / "run" / FIT_JSON).read_text())["cpu_kernels"]
    assert rec["onednn"] is False and rec["crash"] == f"{OP} (SIGSEGV)"
    assert any("oneDNN disabled: it crashed on this CPU in" in s for s in said)
    assert res.extra["cpu_kernels"]["onednn"] is False


@pytest.mark.kernel_probe
def test_fit_runs_bf16_where_the_probe_chose_it_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bf16_cpu: None
) -> None:
    # A real bf16 autocast training step on this CPU (slow where bf16 is emulated: one epoch).
    fake_child(monkeypatch, timings=speeds(fp32=0.3, bf16=0.1))
    said: list[str] = []
    quiet_fit(toy_dataset(64), tcfg(epochs=1), tmp_path / "run", cache_dir=tmp_path / "c",
              log=said.append)  # fmt: skip
    fit_json = json.loads((tmp_path / "run" / FIT_JSON).read_text())
    assert fit_json["precision"] == "bf16-mixed"
    assert fit_json["cpu_kernels"]["bf16_speedup"] == 3.0
    assert any("precision bf16-mixed: bf16 autocast measured 3.00x faster" in s for s in said)
    # Inference: the forward measured 2x faster, so bf16 is checked against fp32 on validation
    # and recorded in the weights' metadata, which every command reads.
    inference = fit_json["inference"]
    assert inference["bf16_forward_speedup"] == 2.0 and inference["images"] == 96
    within = inference["max_abs_prob_diff"] <= probe.BF16_PROB_TOLERANCE
    assert inference["precision"] == ("bf16" if within else "32")
    _, meta = load_model(tmp_path / "run")
    assert meta.extra["inference_precision"] == inference["precision"]


@pytest.mark.kernel_probe
def test_bf16_inference_needs_a_faster_forward_and_agreeing_probabilities(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bf16_cpu: None
) -> None:
    fit_module = importlib.import_module("ferlab.training.fit")
    slow = dict(speeds(fp32=0.3, bf16=0.1), fp32_forward_s=1.0, bf16_forward_s=0.9)
    fake_child(monkeypatch, timings=slow)  # forward only 1.11x faster: fp32
    quiet_fit(toy_dataset(64), tcfg(epochs=1), tmp_path / "slow", cache_dir=tmp_path / "c1")
    assert load_model(tmp_path / "slow")[1].extra["inference_precision"] == "32"
    fake_child(monkeypatch, timings=speeds(fp32=0.3, bf16=0.1))
    monkeypatch.setattr(fit_module, "BF16_PROB_TOLERANCE", -1.0)  # nothing agrees closely enough
    quiet_fit(toy_dataset(64), tcfg(epochs=1), tmp_path / "far", cache_dir=tmp_path / "c2")
    inference = json.loads((tmp_path / "far" / FIT_JSON).read_text())["inference"]
    assert inference["precision"] == "32" and inference["note"].startswith("fp32")


def test_inference_runs_bf16_only_where_the_weights_say_so_on_a_bf16_cpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    torch.manual_seed(0)
    model = create_model("ferlab_vgg", num_classes=4, channels=1, widths=[8, 16, 16, 24],
                         depths=[1, 1, 1, 1])  # fmt: skip
    images = (np.random.default_rng(0).random((40, 16, 16, 1)) * 255).astype(np.uint8)

    def meta(precision: str) -> ModelMeta:
        return ModelMeta(
            architecture="ferlab_vgg", labels=["angry", "happy", "sad", "neutral"],
            image_size=16, channels=1, mean=(0.5,), std=(0.25,),
            extra={"inference_precision": precision},
        )  # fmt: skip

    monkeypatch.setattr(probe, "cpu_flags", lambda: ["avx512f", "avx512_bf16"])
    fp32 = predict_all(model, images, meta("32"), None).plain
    bf16 = predict_all(model, images, meta("bf16"), None).plain
    assert not np.array_equal(fp32, bf16)  # autocast really ran
    np.testing.assert_allclose(fp32, bf16, atol=probe.BF16_PROB_TOLERANCE)
    monkeypatch.setattr(probe, "cpu_flags", lambda: ["avx2"])  # no native bf16: fp32
    np.testing.assert_array_equal(predict_all(model, images, meta("bf16"), None).plain, fp32)


# -- the real child ----------------------------------------------------------------------------
def shipped_models() -> list[tuple[str, int, int]]:
    """(architecture, image size, channels) of every model in the shipped experiment files."""
    out = set()
    for path in (REPO / "src" / "ferlab" / "configs").glob("*.yaml"):
        for m in yaml.safe_load(path.read_text()).get("models", []):
            out.add((m["name"], int(m.get("image_size", 48)), int(m.get("channels", 1))))
    return sorted(out)


REGISTRY = sorted(
    {(n, 48, 1) for n in ferlab_models()}
    | set(shipped_models())
    | {("resnet18", 224, 3), ("convnext_atto", 224, 3), ("mobilenetv3_small_100", 224, 3),
       ("tv:resnet18", 224, 3), ("ferlab_resnet", 48, 3)}
)  # fmt: skip


@pytest.mark.kernel_probe
@pytest.mark.parametrize(("name", "size", "chans"), REGISTRY, ids=lambda v: str(v))
def test_every_model_trains_a_step_in_a_child_without_a_native_crash(
    name: str, size: int, chans: int
) -> None:
    # One real forward+backward (small odd batch; at 48 px also 64 and 37) and an eval forward,
    # in a child: a crashing kernel fails this test, naming the model and the op, not the suite.
    spec = {
        "architecture": name, "kwargs": {}, "num_classes": 7, "in_chans": chans,
        "image_size": size, "batch_sizes": probe.probe_batch_sizes(size, 64, 37), "threads": 2,
        "time_batch": 0, "onednn": True,
    }  # fmt: skip
    got = probe.run_child(spec)
    assert got.ok, (
        f"{name} at {chans}x{size}x{size}: the training step died "
        f"({got.signal_name or got.error or got.returncode}) in {got.where}; CPU "
        f"{probe.cpu_description()}"
    )
    assert got.phase == "done"


def test_mini_xception_residual_is_the_strided_conv() -> None:
    # The residual subsamples then convolves 1x1 (the crash-free form): the same function as
    # the strided 1x1 conv with the same weights.
    torch.manual_seed(0)
    block = create_model("ferlab_mini_xception", num_classes=7).blocks[0].eval()
    conv = block.residual[0]
    x = torch.randn(5, conv.in_channels, 13, 13)
    strided = torch.nn.functional.conv2d(x, conv.weight, stride=2)
    with torch.no_grad():
        assert torch.allclose(conv(x[:, :, ::2, ::2]), strided, atol=1e-6)
        assert block(x).shape == (5, conv.out_channels, 7, 7)


def test_the_cpu_is_described_with_the_flags_that_pick_kernels() -> None:
    text = probe.cpu_description(["avx2", "avx512f", "avx512_bf16", "sse4_2"])
    assert "avx512_bf16" in text and "avx512f" in text and "sse4_2" not in text
    assert torch.backends.cpu.get_cpu_capability() in text


def test_runtime_onednn_is_a_documented_setting() -> None:
    assert RuntimeConfig().onednn == "auto"
    assert RuntimeConfig(onednn="off").onednn == "off"
    with pytest.raises(ValueError):
        RuntimeConfig(onednn="sometimes")  # type: ignore[arg-type]


def test_processes_probing_at_once_run_one_child_and_agree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_bf16: None
) -> None:
    # Two callers at once (as DDP ranks start): the second waits on the lock and reads the
    # first one's outcome, so they cannot train at different settings.
    calls = fake_child(monkeypatch, crash="onednn")
    results: list = []
    threads = [threading.Thread(target=lambda: results.append(kernels(tmp_path))) for _ in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(results) == 2 and len(calls) == 2  # one probe: oneDNN on, then off
    assert sorted(r.cached for r in results) == [False, True]
    assert results[0].onednn is results[1].onednn is False


def test_a_timing_taken_on_a_busy_machine_holds_for_a_while_then_is_measured_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bf16_cpu: None
) -> None:
    calls = fake_child(monkeypatch, timings=speeds(fp32=0.15, bf16=0.1))  # 1.5x
    monkeypatch.setattr(probe.os, "getloadavg", lambda: (9.0, 9.0, 9.0))
    monkeypatch.setattr(probe, "_machine_busy", REAL_BUSY)
    clock = {"now": 1000.0}
    monkeypatch.setattr(probe.time, "time", lambda: clock["now"])
    said: list[str] = []
    got = kernels(tmp_path, log=said.append)
    assert got.precision == "bf16-mixed" and not got.cached
    assert any("busy machine" in s and "load average 9.0" in s for s in said)
    # The runs starting now (the run's other pairs, other DDP ranks) read the same answer ...
    clock["now"] += probe.PROVISIONAL_S - 1
    same = kernels(tmp_path)
    assert len(calls) == 1 and same.cached and same.precision == "bf16-mixed"
    # ... and a run after that measures again, on a quiet machine for good.
    clock["now"] += 2
    monkeypatch.setattr(probe.os, "getloadavg", lambda: (0.1, 0.1, 0.1))
    kernels(tmp_path)
    assert len(calls) == 2
    clock["now"] += 10 * probe.PROVISIONAL_S
    again = kernels(tmp_path)
    assert len(calls) == 2 and again.cached
