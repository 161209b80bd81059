"""Weights files are input too: every bad weights file or meta.json fails with one clear
message naming the file, through load_model, ferlab.evaluate and `ferlab evaluate`; a pickle
that would run code never runs; a fine-tuned head is kept only when the label lists match."""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ferlab import cli
from ferlab.api import evaluate
from ferlab.config import ModelConfig
from ferlab.layout import META, WEIGHTS
from ferlab.models import (
    CorruptWeightsError,
    ModelMeta,
    UnsafeWeightsError,
    WeightsError,
    WeightsMetadataError,
    WeightsMismatchError,
    WeightsNotFoundError,
    check_pretrained,
    create_model,
    load_model,
    load_pretrained_path,
    plain_state_dict,
    save_model,
)

LABELS = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
ARCH = "ferlab_mini_xception"  # the smallest net: these tests build dozens of models


class _Payload:
    """Unpickling this creates a file: the marker proves whether code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (str(self.marker), "w"))


def _meta(labels: list[str] = LABELS, arch: str = ARCH) -> ModelMeta:
    return ModelMeta(architecture=arch, labels=labels)


def _run(root: Path, labels: list[str] = LABELS) -> Path:
    """A complete run folder (weights.safetensors + meta.json) of a 7-class net."""
    torch.manual_seed(0)
    save_model(create_model(ARCH, len(labels)), _meta(labels), root)
    return root


def _edit_meta(run: Path, **changes: object) -> Path:
    meta = json.loads((run / META).read_text())
    meta.update(changes)
    (run / META).write_text(json.dumps(meta))
    return run / META


# ---------------------------------------------------------------- the bad inputs


@dataclass
class Case:
    """A bad weights input: the path to pass, the error it must raise, the file it must name."""

    path: Path
    error: type[WeightsError]
    names: Path
    says: str


def _truncated_safetensors(tmp: Path) -> Case:
    run = _run(tmp / "run")
    blob = (run / WEIGHTS).read_bytes()
    (run / WEIGHTS).write_bytes(blob[: len(blob) // 2])
    return Case(run, CorruptWeightsError, run / WEIGHTS, "truncated or corrupt")


def _garbage_safetensors(tmp: Path) -> Case:
    run = _run(tmp / "run")
    (run / WEIGHTS).write_bytes(b"\x00\xff" * 300)
    return Case(run, CorruptWeightsError, run / WEIGHTS, "not a readable safetensors file")


def _truncated_pt(tmp: Path) -> Case:
    run = tmp / "run"
    run.mkdir()
    torch.save(plain_state_dict(create_model(ARCH, 7)), run / "weights.pt")
    blob = (run / "weights.pt").read_bytes()
    (run / "weights.pt").write_bytes(blob[: len(blob) // 2])
    (run / META).write_text(_meta().to_json())
    return Case(run / "weights.pt", CorruptWeightsError, run / "weights.pt", "truncated")


def _text_pt(tmp: Path) -> Case:
    run = tmp / "run"
    run.mkdir()
    (run / "weights.pt").write_text("hello, this is not a tensor file")
    (run / META).write_text(_meta().to_json())
    return Case(run / "weights.pt", CorruptWeightsError, run / "weights.pt", "not a readable")


def _evil_pickle(tmp: Path) -> Case:
    run = tmp / "run"
    run.mkdir()
    evil = {"state_dict": {"w": torch.zeros(1)}, "payload": _Payload(tmp / "pwned")}
    torch.save(evil, run / "weights.pth")
    (run / META).write_text(_meta().to_json())
    return Case(run / "weights.pth", UnsafeWeightsError, run / "weights.pth", "never unpickles")


def _missing_meta(tmp: Path) -> Case:
    run = tmp / "run"
    run.mkdir()
    save_file(plain_state_dict(create_model(ARCH, 7)), str(run / WEIGHTS))  # no header meta
    return Case(run, WeightsMetadataError, run / META, "No model metadata")


def _malformed_json(tmp: Path) -> Case:
    run = _run(tmp / "run")
    (run / META).write_text('{"architecture": "ferlab_mini_xception", "labels": [')
    return Case(run, WeightsMetadataError, run / META, "not valid ferlab model metadata")


def _json_not_an_object(tmp: Path) -> Case:
    run = _run(tmp / "run")
    (run / META).write_text("[1, 2, 3]")
    return Case(run, WeightsMetadataError, run / META, "JSON object")


def _bad_labels(tmp: Path) -> Case:
    run = _run(tmp / "run")
    return Case(run, WeightsMetadataError, _edit_meta(run, labels=["happiness"]), "canonical")


def _bad_kwargs_type(tmp: Path) -> Case:
    run = _run(tmp / "run")
    return Case(run, WeightsMetadataError, _edit_meta(run, kwargs=[1, 2]), "mappings")


def _bad_extra_data(tmp: Path) -> Case:
    run = _run(tmp / "run")  # extra.data is how ferlab.evaluate reloads the run's dataset
    return Case(run, WeightsMetadataError, _edit_meta(run, extra={"data": "lab"}), "extra.data")


def _unknown_architecture(tmp: Path) -> Case:
    run = _run(tmp / "run")
    meta = _edit_meta(run, architecture="ferlab_no_such_net")
    return Case(run, WeightsMetadataError, meta, "cannot build architecture")


def _other_architecture(tmp: Path) -> Case:
    run = _run(tmp / "run")
    _edit_meta(run, architecture="ferlab_vgg")
    return Case(run, WeightsMismatchError, run / WEIGHTS, "does not fit ferlab_vgg")


def _other_class_count(tmp: Path) -> Case:
    run = _run(tmp / "run")
    _edit_meta(run, labels=["angry", "happy", "neutral"])
    return Case(run, WeightsMismatchError, run / WEIGHTS, "weights hold 7 classes")


def _wrong_shape(tmp: Path) -> Case:
    run = tmp / "run"
    state = plain_state_dict(create_model(ARCH, 7))
    first = next(k for k, v in state.items() if v.ndim == 4)
    state[first] = torch.zeros(3, 3, 3, 3)
    run.mkdir()
    save_file(state, str(run / WEIGHTS))
    (run / META).write_text(_meta().to_json())
    return Case(run, WeightsMismatchError, run / WEIGHTS, "other shapes")


CASES: dict[str, Callable[[Path], Case]] = {
    "truncated safetensors": _truncated_safetensors,
    "garbage safetensors": _garbage_safetensors,
    "truncated .pt": _truncated_pt,
    "text as .pt": _text_pt,
    "pickle that runs code": _evil_pickle,
    "meta.json missing": _missing_meta,
    "meta.json not JSON": _malformed_json,
    "meta.json not an object": _json_not_an_object,
    "meta.json bad labels": _bad_labels,
    "meta.json kwargs not a mapping": _bad_kwargs_type,
    "meta.json extra.data not a mapping": _bad_extra_data,
    "meta.json unknown architecture": _unknown_architecture,
    "meta.json other architecture": _other_architecture,
    "meta.json other class count": _other_class_count,
    "weights of the wrong shape": _wrong_shape,
}


@pytest.fixture(params=list(CASES))
def case(request: pytest.FixtureRequest, tmp_path: Path) -> Case:
    return CASES[request.param](tmp_path)


def _check_message(error: BaseException, case: Case) -> None:
    msg = str(error)
    assert str(case.names) in msg, msg
    assert case.says in msg, msg
    assert "\n" not in msg, msg


def test_load_model_raises_one_error_naming_the_file(case: Case) -> None:
    with pytest.raises(case.error) as err:
        load_model(case.path)
    _check_message(err.value, case)


def test_api_evaluate_raises_the_same_error(case: Case, tmp_path: Path) -> None:
    with pytest.raises(case.error) as err:
        evaluate(case.path, "synthetic:lab", cache_dir=tmp_path / "cache", bootstrap=0)
    _check_message(err.value, case)


def test_cli_evaluate_prints_one_error_line_and_exits_2(
    case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["evaluate", "--weights", str(case.path), "--data", "synthetic:lab"]
    code = cli.main([*argv, "--cache-dir", str(tmp_path / "cache")])
    out, err = capsys.readouterr()
    assert code == cli.EXIT_BAD_INPUT
    assert "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ferlab: error: "), err
    assert str(case.names) in lines[0] and case.says in lines[0]


def test_every_weights_error_is_one_family() -> None:
    for error in (
        UnsafeWeightsError,
        CorruptWeightsError,
        WeightsMetadataError,
        WeightsMismatchError,
        WeightsNotFoundError,
    ):
        assert issubclass(error, WeightsError) and issubclass(error, ValueError)
    assert issubclass(WeightsNotFoundError, FileNotFoundError)


def test_cli_missing_weights_is_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(["evaluate", "--weights", str(tmp_path / "nope"), "--data", "synthetic:lab"])
    err = capsys.readouterr().err
    assert code == cli.EXIT_BAD_INPUT
    assert err.startswith("ferlab: error: No weights at ") and str(tmp_path / "nope") in err


# ---------------------------------------------------------------- a pickle never runs


def _live_payload_control(tmp: Path) -> None:
    """The payload is live: plain unpickling creates its marker (so its absence means something)."""
    probe = tmp / "probe"
    pickle.loads(pickle.dumps(_Payload(probe))).close()
    assert probe.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_a_pickle_that_runs_code_never_runs_anywhere(
    tmp_path: Path, writer: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _live_payload_control(tmp_path)
    marker = tmp_path / "pwned"
    run = tmp_path / "run"
    run.mkdir()
    evil = {"state_dict": plain_state_dict(create_model(ARCH, 7)), "x": _Payload(marker)}
    path = run / "weights.pt"
    if writer == "torch.save":
        torch.save(evil, path)
    else:
        with open(path, "wb") as fh:
            pickle.dump(evil, fh)
    (run / META).write_text(_meta().to_json())

    with pytest.raises(UnsafeWeightsError, match="never unpickles code"):
        load_model(path)
    with pytest.raises(UnsafeWeightsError):
        evaluate(path, "synthetic:lab", cache_dir=tmp_path / "cache", bootstrap=0)
    with pytest.raises(UnsafeWeightsError):
        create_model(ARCH, 7, pretrained=path)
    with pytest.raises(UnsafeWeightsError):
        check_pretrained(ModelConfig(name=ARCH, pretrained=str(path)))
    code = cli.main(["evaluate", "--weights", str(path), "--data", "synthetic:lab"])
    assert code == cli.EXIT_BAD_INPUT
    assert capsys.readouterr().err.startswith(f"ferlab: error: {path} is not a plain tensor file")
    assert not marker.exists()


# ---------------------------------------------------------------- check_pretrained


def test_check_pretrained_accepts_good_files_and_non_paths(tmp_path: Path) -> None:
    run = _run(tmp_path / "run")
    plain = tmp_path / "plain" / "w.safetensors"
    plain.parent.mkdir()
    save_file(plain_state_dict(create_model(ARCH, 7)), str(plain))
    pth = tmp_path / "plain" / "w.pth"
    torch.save({"state_dict": plain_state_dict(create_model(ARCH, 7))}, pth)
    for pretrained in (False, True, "false", str(run), str(run / WEIGHTS), str(plain), str(pth)):
        assert check_pretrained(ModelConfig(name=ARCH, pretrained=pretrained)) is None


def _no_tensors_pt(tmp: Path) -> tuple[Path, type[WeightsError], str]:
    path = tmp / "w.pt"
    torch.save({"epoch": 3}, path)
    return path, CorruptWeightsError, "not a state dict"


def _empty_safetensors(tmp: Path) -> tuple[Path, type[WeightsError], str]:
    path = tmp / "w.safetensors"
    save_file({}, str(path))
    return path, CorruptWeightsError, "holds no tensors"


def _truncated_data(tmp: Path) -> tuple[Path, type[WeightsError], str]:
    path = tmp / "w.safetensors"
    save_file(plain_state_dict(create_model(ARCH, 7)), str(path))
    blob = path.read_bytes()
    path.write_bytes(blob[:-100])  # the header is whole, the tensors are cut
    return path, CorruptWeightsError, "truncated or corrupt"


def _missing_file(tmp: Path) -> tuple[Path, type[WeightsError], str]:
    return tmp / "missing.safetensors", WeightsNotFoundError, "does not exist"


def _unknown_suffix(tmp: Path) -> tuple[Path, type[WeightsError], str]:
    path = tmp / "w.h5"
    path.write_bytes(b"\x89HDF")
    return path, CorruptWeightsError, "unknown weights format"


def _run_with_broken_meta(tmp: Path) -> tuple[Path, type[WeightsError], str]:
    run = _run(tmp / "run")
    (run / META).write_text("{")
    return run / META, WeightsMetadataError, "not valid ferlab model metadata"


@pytest.mark.parametrize(
    "make",
    [
        _no_tensors_pt,
        _empty_safetensors,
        _truncated_data,
        _missing_file,
        _unknown_suffix,
        _run_with_broken_meta,
    ],
)
def test_check_pretrained_refuses_bad_files_naming_model_and_file(
    tmp_path: Path, make: Callable[[Path], tuple[Path, type[WeightsError], str]]
) -> None:
    named, error, says = make(tmp_path)
    pretrained = str(named.parent if named.name == META else named)
    with pytest.raises(error) as err:
        check_pretrained(ModelConfig(name=ARCH, pretrained=pretrained))
    msg = str(err.value)
    assert msg.startswith(f"models entry {ARCH!r}, pretrained: ")
    assert str(named) in msg and says in msg and "\n" not in msg
    # what the check refuses, loading refuses too (with the same family)
    with pytest.raises(WeightsError):
        create_model(ARCH, 7, pretrained=pretrained)


def test_check_pretrained_reads_only_the_safetensors_header(tmp_path: Path, monkeypatch) -> None:
    import safetensors.torch

    path = tmp_path / "w.safetensors"
    save_file(plain_state_dict(create_model(ARCH, 7)), str(path))

    def no_full_load(*a: object, **k: object) -> None:
        raise AssertionError("check_pretrained loaded every tensor")

    monkeypatch.setattr(safetensors.torch, "load_file", no_full_load)
    check_pretrained(ModelConfig(name=ARCH, pretrained=str(path)))


# ---------------------------------------------------------------- the fine-tuned head


def _source(labels: list[str]) -> torch.nn.Module:
    torch.manual_seed(7)
    model = create_model("ferlab_vgg", len(labels), width_mult=0.25)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def _fine_tune_from(tmp: Path, run_labels: list[str], labels: list[str] | None):
    src = _source(run_labels)
    run = tmp / "run"
    save_model(src, ModelMeta("ferlab_vgg", run_labels, kwargs={"width_mult": 0.25}), run)
    torch.manual_seed(99)
    dst = create_model("ferlab_vgg", 7, width_mult=0.25)
    report = load_pretrained_path(dst, run, labels=labels)
    return src, dst, report


def _same(a: torch.nn.Module, b: torch.nn.Module, key: str) -> bool:
    return torch.equal(a.state_dict()[key], b.state_dict()[key])


BACKBONE = "stages.0.0.0.weight"
HEAD = "head.fc.weight"


def test_a_run_with_the_same_labels_keeps_its_head(tmp_path: Path) -> None:
    src, dst, report = _fine_tune_from(tmp_path, LABELS, LABELS)
    assert _same(src, dst, BACKBONE) and _same(src, dst, HEAD)
    assert report.head_kept and report.head_replaced == []
    assert report.head_decision.startswith("kept: the run's labels are the model's")


@pytest.mark.parametrize(
    "labels",
    [
        pytest.param(
            ["angry", "disgust", "fear", "happy", "sad", "surprise", "contempt"], id="other"
        ),
        pytest.param(
            ["neutral", "angry", "disgust", "fear", "happy", "sad", "surprise"], id="order"
        ),
    ],
)
def test_a_run_with_other_labels_of_the_same_count_gets_a_new_head(
    tmp_path: Path, labels: list[str]
) -> None:
    src, dst, report = _fine_tune_from(tmp_path, LABELS, labels)
    assert _same(src, dst, BACKBONE)
    assert not _same(src, dst, HEAD)
    torch.manual_seed(99)
    fresh = create_model("ferlab_vgg", 7, width_mult=0.25)
    assert _same(fresh, dst, HEAD)  # the model's own init, untouched
    assert not report.head_kept and HEAD in report.head_replaced
    assert report.head_decision.startswith("replaced: the run's labels")
    assert ", ".join(labels) in report.head_decision


def test_create_model_passes_the_labels_to_the_head_rule(tmp_path: Path) -> None:
    src = _source(LABELS)
    save_model(src, ModelMeta("ferlab_vgg", LABELS, kwargs={"width_mult": 0.25}), tmp_path)
    other = [*LABELS[:6], "contempt"]
    kept = create_model("ferlab_vgg", 7, width_mult=0.25, pretrained=tmp_path, labels=LABELS)
    new = create_model("ferlab_vgg", 7, width_mult=0.25, pretrained=tmp_path, labels=other)
    assert _same(src, kept, HEAD) and not _same(src, new, HEAD)
    with pytest.raises(ValueError, match="num_classes=3"):
        create_model("ferlab_vgg", 3, pretrained=tmp_path, labels=LABELS)


def test_without_labels_or_metadata_the_head_is_kept_on_class_count_alone(
    tmp_path: Path,
) -> None:
    src, dst, report = _fine_tune_from(tmp_path, LABELS, None)
    assert _same(src, dst, HEAD) and report.head_kept
    assert "class count alone" in report.head_decision
    plain = tmp_path / "plain" / "w.safetensors"
    plain.parent.mkdir()
    save_file(plain_state_dict(src), str(plain))
    dst2 = create_model("ferlab_vgg", 7, width_mult=0.25)
    report2 = load_pretrained_path(dst2, plain, labels=LABELS)
    assert _same(src, dst2, HEAD) and report2.head_kept
    assert report2.head_decision.startswith("kept on class count alone: w.safetensors has no")


def test_another_class_count_still_gets_a_new_head_and_says_why(tmp_path: Path) -> None:
    plain = tmp_path / "w.safetensors"
    save_file(plain_state_dict(_source(LABELS)), str(plain))
    dst = create_model("ferlab_vgg", 3, width_mult=0.25)
    report = load_pretrained_path(dst, plain, labels=["angry", "happy", "neutral"])
    assert report.head_decision == "replaced: the file's head has 7 classes, the model 3"


def test_a_run_of_another_architecture_says_what_it_was_trained_as(tmp_path: Path) -> None:
    run = _run(tmp_path / "run")
    with pytest.raises(WeightsMismatchError, match=f"trained as {ARCH}") as err:
        create_model("ferlab_resnet", 7, pretrained=run, labels=LABELS)
    assert str(run / WEIGHTS) in str(err.value) and "\n" not in str(err.value)
