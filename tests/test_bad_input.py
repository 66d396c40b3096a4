"""Bad input catalogue (issue 7, part 1): every kind of bad input, through the command line and
the Python API, gives one clear line naming the bad value and what is allowed, exit code 2 (CLI) or
a specific exception (API), no traceback (unless debug=true), and leaves nothing half-written.

Command-line cases run ``pinn_lora.cli.adapt.main`` in-process (argv patched, SystemExit caught, stderr
captured): the same code path as ``python -m pinn_lora.adapt`` without ~3 s of interpreter start
per case. A few cases run in a real subprocess (exit code, traceback with debug=true)."""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import pinn_lora
import pinn_lora.cli.adapt as adapt_cli
import pinn_lora.store.rundir
from pinn_lora.runs.adapter_io import AdapterMismatchError
from pinn_lora.store.tensors import CheckpointError
from pinn_lora.methods import MethodOptionError
from pinn_lora.model.network import build_network
from pinn_lora.pde.problem import CoefficientError
from pinn_lora.core.registry import UnknownNameError
from pinn_lora.runs.adapt import ConfigError

FAST = ["steps=1", "n_points=16", "lbfgs_steps=0", "eval_every=1", "progress=false", "plots=false", "device=cpu",
        "checkpoint_every=0"]
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(root: Path) -> dict[str, tuple[int, str]]:
    """Every file under ``root``: (mtime in ns, sha256)."""
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, sha(p)) for p in sorted(root.rglob("*")) if p.is_file()}


def cli(args, monkeypatch, capsys, cwd: Path) -> tuple[int, str, str]:
    """``python -m pinn_lora.adapt *args`` in this process: (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["pinn_lora.adapt", *map(str, args)])
    monkeypatch.chdir(cwd)
    code = 0
    try:
        adapt_cli.main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line(code: int, err: str, message: str) -> None:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, err
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert message in lines[0], (message, lines[0])


# ---- saved base models and adapters, intact and damaged ------------------------------------------------------
def nan_in_first_weight(path: Path) -> bytes:
    """The safetensors file ``path`` with the first element of its first 2-D weight set to NaN."""
    from safetensors.torch import load_file, save

    tensors = load_file(str(path))
    key = next(k for k, t in tensors.items() if t.dim() == 2)
    tensors[key] = tensors[key].clone()
    tensors[key].view(-1)[0] = float("nan")
    return save(tensors)


def nan_network():
    net = pinn_lora.load_base("helmholtz")[0]
    with torch.no_grad():
        net.linears[0].weight[0, 0] = float("nan")
    return net


class Files:
    """Paths of saved bases (``<stem>`` for base=) and adapter directories, made once per module."""


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Files:
    helm_k3 = pinn_lora.get_problem("helmholtz", k=3.0)
    root = tmp_path_factory.mktemp("saved")
    f = Files()
    net, card, _ = pinn_lora.load_base("helmholtz")
    f.helm = root / "helm"
    pinn_lora.save_base(net, card, f.helm)
    weights, card_path = Path(f"{f.helm}.safetensors"), Path(f"{f.helm}.json")
    good_card = json.loads(card_path.read_text())

    def variant(name: str, card_text: str | None = None, weights_bytes: bytes | None = None) -> Path:
        stem = root / name
        Path(f"{stem}.json").write_text(card_path.read_text() if card_text is None else card_text)
        Path(f"{stem}.safetensors").write_bytes(weights.read_bytes() if weights_bytes is None else weights_bytes)
        return stem

    raw = weights.read_bytes()
    f.truncated = variant("truncated", weights_bytes=raw[: len(raw) // 2])
    f.wrong_hash = variant("wrong_hash", json.dumps({**good_card, "weights_sha256": "0" * 64}))
    f.wrong_shape = variant("wrong_shape", json.dumps({**good_card, "network": {"layers": [2, 32, 32, 32, 1],
                                                                                  "activation": "sin"}}))
    f.wrong_inputs = variant("wrong_inputs", json.dumps({**good_card, "network": {"layers": [3, 64, 64, 64, 1],
                                                                                    "activation": "sin"}}))
    f.not_json = variant("not_json", "{\"problem\": \"helmholtz\", ")
    f.no_network = variant("no_network", json.dumps({k: v for k, v in good_card.items() if k != "network"}))
    f.bad_layers = variant("bad_layers", json.dumps({**good_card, "network": {"layers": "abc", "activation": "sin"}}))
    f.bad_activation = variant("bad_activation", json.dumps({**good_card, "network": {"layers": [2, 64, 64, 64, 1],
                                                                                        "activation": "swish9"}}))
    f.bad_sha_format = variant("bad_sha_format", json.dumps({**good_card, "weights_sha256": "xyz"}))
    f.unknown_family = variant("unknown_family", json.dumps({**good_card, "problem": "navier_stokes"}))
    f.bad_coefficient = variant("bad_coefficient", json.dumps({**good_card, "coefficients": {"k": -1.0}}))
    f.list_card = variant("list_card", "[1, 2, 3]")
    nan_weights = nan_in_first_weight(weights)  # a consistent file and card, one weight NaN (issue 14, item 8)
    f.nonfinite = variant("nonfinite", json.dumps({**good_card, "weights_sha256": hashlib.sha256(nan_weights).hexdigest()}),
                          nan_weights)
    f.missing = root / "nothing_here"
    (root / "no_weights.json").write_text(card_path.read_text())
    f.no_weights = root / "no_weights"

    # adapters: a LoRA on the shipped Helmholtz base (attached, not trained: loading does not care)
    f.adapter = root / "adapter"
    method = pinn_lora.get_method("lora", rank=4)
    model = pinn_lora.attach(pinn_lora.load_base("helmholtz")[0], method, helm_k3, base_card=card)
    pinn_lora.save_adapter(model, f.adapter, method, helm_k3)
    acard = json.loads((f.adapter / "card.json").read_text())
    araw = (f.adapter / "adapter.safetensors").read_bytes()

    def adapter_variant(name: str, card_dict: dict | None = None, weights_bytes: bytes | None = None,
                        card_text: str | None = None) -> Path:
        d = root / name
        d.mkdir()
        (d / "card.json").write_text(card_text if card_text is not None else json.dumps(card_dict or acard))
        if weights_bytes is not False:
            (d / "adapter.safetensors").write_bytes(araw if weights_bytes is None else weights_bytes)
        return d

    f.a_truncated = adapter_variant("a_truncated", weights_bytes=araw[: len(araw) // 3])
    f.a_wrong_hash = adapter_variant("a_wrong_hash", {**acard, "weights_sha256": "f" * 64})
    f.a_wrong_rank = rebound(adapter_variant("a_wrong_rank", {**acard, "method": {**acard["method"], "rank": 2}}))
    f.a_bad_rank = adapter_variant("a_bad_rank", {**acard, "method": {**acard["method"], "rank": -2}})
    f.a_unknown_method = adapter_variant("a_unknown_method", {**acard, "method": {**acard["method"], "name": "lorax"}})
    f.a_no_kind = adapter_variant("a_no_kind", {k: v for k, v in acard.items() if k != "kind"})
    f.a_bad_layers = adapter_variant("a_bad_layers", {**acard, "adapted_layers": "all"})
    f.a_no_base = adapter_variant("a_no_base", {k: v for k, v in acard.items() if k != "base"})
    f.a_bad_coefficient = adapter_variant("a_bad_coefficient",  # json.dumps writes the bare token NaN
                                          card_text=json.dumps({**acard, "coefficients": {"k": float("nan")}}))
    f.a_no_weights = adapter_variant("a_no_weights", weights_bytes=False)
    nan_adapter = nan_in_first_weight(f.adapter / "adapter.safetensors")
    f.a_nonfinite = adapter_variant("a_nonfinite", {**acard, "weights_sha256": hashlib.sha256(nan_adapter).hexdigest()},
                                    nan_adapter)
    f.a_no_activation = rebound(adapter_variant("a_no_activation", {**acard, "base": {
        **acard["base"], "network": {"layers": acard["base"]["network"]["layers"]}}}))
    f.a_file = root / "a_file"
    f.a_file.write_text("not a directory")
    f.dangling = root / "dangling"
    f.dangling.symlink_to(root / "nowhere")
    f.a_empty = root / "a_empty"
    f.a_empty.mkdir()
    f.previous_run = root / "previous_run"
    with pinn_lora.store.rundir.claim(f.previous_run):
        (f.previous_run / "metrics.jsonl").write_text('{"step": 0, "loss": 1.0}\n')
    f.foreign = root / "foreign"
    f.foreign.mkdir()
    (f.foreign / "notes.txt").write_text("not a run")
    return f


def rebound(d: Path) -> Path:
    """Bind ``d``'s edited card to its weights again (as a forger who knows the format would): the weights file
    gets the card's hash, the card the file's sha256, so the checks after the binding's are reached."""
    from safetensors.torch import load_file, save

    from pinn_lora.runs.adapter_io import CARD_COPY_KEY, CARD_HASH_KEY, canonical_card

    card = json.loads((d / "card.json").read_text())
    bound = canonical_card(card)
    data = save(load_file(str(d / "adapter.safetensors")),
                metadata={CARD_HASH_KEY: hashlib.sha256(bound.encode()).hexdigest(), CARD_COPY_KEY: bound})
    (d / "adapter.safetensors").write_bytes(data)
    (d / "card.json").write_text(json.dumps({**card, "weights_sha256": hashlib.sha256(data).hexdigest()}))
    return d


# ---- command line: one line, exit code 2, nothing left behind -------------------------------------------------
CLI_CASES = [
    # unknown names
    (["problem=burger"], "unknown problem 'burger'; valid problems: allen_cahn, burgers, helmholtz"),
    (["method=lorra"], "unknown method 'lorra'; valid methods: asymlora, c3la"),
    (["method=odelora", "method.scheme=rk5"], "option scheme='rk5' is not one of: euler, heun, midpoint, rk4"),
    (["sampler=random"], "sampler='random'; choose one of pseudo, Hammersley, Sobol, Halton, LHS"),
    (["derivatives=magic"], "derivatives='magic'; choose one of"),
    (["cuda_graph=maybe"], "cuda_graph='maybe'; use auto, true or false"),
    # coefficients
    (["problem.nu=0"], "burgers: coefficient nu=0 is out of range (allowed: 0.00031831 <= nu <= 100: the range in "
                       "which the Cole–Hopf reference solution is accurate and takes seconds)"),
    (["problem.nu=-0.01"], "coefficient nu=-0.01 is out of range (allowed: 0.00031831 <= nu <= 100"),
    (["problem.nu=nan"], "coefficient nu=nan is out of range (allowed: 0.00031831 <= nu <= 100"),
    (["problem.nu=inf"], "coefficient nu=inf is out of range (allowed: 0.00031831 <= nu <= 100"),
    (["problem.nu=1e-12"], "coefficient nu=1e-12 is out of range (allowed: 0.00031831 <= nu"),  # item 11: hours
    (["problem.nu=1e6"], "coefficient nu=1000000.0 is out of range (allowed: 0.00031831 <= nu <= 100"),  # minutes
    (["problem=allen_cahn", "problem.d=1e-6"], "allen_cahn: d=1e-06, gamma=3 make an interface of width sqrt(2 "
                                               "d/gamma)=0.000816, narrower than the reference solution resolves"),
    (["problem=helmholtz", "problem.k=2.2214"], "helmholtz: k=2.2214 is within 5% of the resonance k²=π²(1²+1²)/4"),
    (["problem=helmholtz", "problem.k=-1"], "coefficient k=-1 is out of range (allowed: 0 <= k)"),
    (["problem=burgers", "problem.gamma=3"], "unknown key 'problem.gamma' for problem burgers; its keys: nu"),
    (["problem=allen_cahn", "problem.d=abc"], "allen_cahn: coefficient d='abc' is not a number (allowed: 0 < d)"),
    (["problem.nu=[]"], "problem.nu=[]: the list of coefficients is empty"),
    (["problem=helmholtz", "problem.modes=5"], "modes=5; give a list of pairs [m, n] of integers >= 1"),
    # rank
    (["method=lora", "method.rank=0"], "method lora: option rank=0 must be > 0"),
    (["method=lora", "method.rank=-2"], "method lora: option rank=-2 must be > 0"),
    (["problem=helmholtz", "method=lora", "method.rank=100"],
     "method lora: rank=100 is larger than any adapted layer allows (at most 64; each layer uses min(rank, out, in))"),
    (["method=lora", "method.rank=2.5"], "method lora: option rank=2.5 must be an integer"),
    # alpha, learning rate, tolerances, loop settings
    (["method=lora", "method.alpha=0"], "method lora: option alpha=0 must be > 0"),
    (["method=lora", "method.alpha=big"], "method lora: option alpha='big' must be a finite number"),
    (["method=lora", "method.lr=0"], "method lora: option lr=0 must be > 0"),
    (["method=lora", "method.lr=-0.001"], "method lora: option lr=-0.001 must be > 0"),
    (["method=lora", "method.lr=fast"], "method lora: option lr='fast' must be a finite number"),
    (["method=odelora", "method.lr=nan"], "method odelora: option lr=nan must be a finite number"),
    (["method=odelora", "method.scheme=dopri5", "method.rtol=0"], "method odelora: option rtol=0 must be > 0"),
    (["method=odelora", "method.scheme=dopri5", "method.atol=-1e-6"], "option atol=-1e-06 must be > 0"),
    (["method=odelora", "method.rtol=tight"], "method odelora: option rtol='tight' must be a finite number"),
    (["method=riemannian", "method.damping=-1"], "option damping=-1 must be > 0"),
    (["steps=-3"], "steps=-3 must be an integer >= 0"),
    (["steps=abc"], "steps='abc' must be an integer >= 0"),
    (["steps=2.5"], "steps=2.5 must be an integer >= 0"),
    (["n_points=0"], "n_points=0 must be an integer >= 1"),
    (["n_points=1000000000000"], "n_points=1000000000000 (x 8 candidates each: sampling=rad, rad_pool=8) needs at least 29.3 PB"),  # item 14
    (["eval_every=0"], "eval_every=0 must be an integer >= 1"),
    (["seed=-1"], "seed=-1 must be an integer >= 0"),
    (["sync_every=2.5"], "sync_every=2.5 must be an integer >= 0"),
    (["sync_every=abc"], "sync_every='abc' must be an integer >= 0"),
    (["checkpoint_every=-1"], "checkpoint_every=-1 must be an integer >= 0"),
    (["base=123"], "base=123 must be a string"),
    (["method=lora", "method.targets=[7]"], "targets: layer index 7 out of range; the network has 5 linear layers"),
    (["plots=maybe"], "plots='maybe' must be true or false"),
    # malformed overrides and unknown keys
    (["problem.nu=[0.1"], "malformed override 'problem.nu=[0.1': no viable alternative at input '[0.1'"),
    (["steps"], "malformed override 'steps': missing EQUAL at '<EOF>'"),
    (["out=${now:"], "malformed override 'out=${now:'"),
    (["seed=0,1"], "'seed=0,1' gives several values: add -m (--multirun)"),
    (["stepz=3"], "unknown key 'stepz'; top-level keys: seed, device, dtype"),
    (["+stepz=100"], "unknown key 'stepz'; top-level keys: seed, device, dtype"),  # issue 14, item 16
    (["+foo=1"], "unknown key 'foo'; top-level keys:"),
    (["++foo=1"], "unknown key 'foo'; top-level keys:"),
    (["method=lora", "+method.rnk=3"], "unknown key 'method.rnk' for method lora; its keys: rank, alpha"),
    (["seed=1180591620717411303424"], "seed=1180591620717411303424 is too large: a seed is an integer from 0 to "
                                      "2147483647"),  # item 18 (2**70)
    (["method=lora", "method.rnk=3"], "unknown key 'method.rnk' for method lora; its keys: rank, alpha"),
    (["problem.nu=${oops}"], "Interpolation key 'oops' not found"),
    (["~problem"], "no problem selected (was it removed with ~problem?); choose one with problem=NAME"),
    (["--foo"], "unrecognized arguments: --foo (see --help)"),
    (["hydra/launcher=nope"], "Could not find 'hydra/launcher/nope'; Available options in 'hydra/launcher':"),
    # device and float type
    pytest.param(["device=cuda"], "device='cuda' requested but no CUDA device is available; use device=cpu or auto",
                 marks=NO_CUDA),
    (["device=tpu"], "device='tpu': use 'auto', 'cpu', 'cuda' or 'cuda:N'"),
    (["dtype=float16"], "dtype='float16': choose one of float64, float32"),
    (["dtype=bfloat16"], "dtype='bfloat16': choose one of float64, float32"),
    # the run directory
    (["out="], "out='': the run directory is empty"),
]

BASE_CASES = [  # base=<a saved base model>, missing or damaged
    ("missing", [], "no base model"),
    ("no_weights", [], "its weights file"),
    ("truncated", ["problem=helmholtz"], "does not match its card's sha256 (file changed or truncated)"),
    ("wrong_hash", ["problem=helmholtz"], "does not match its card's sha256"),
    ("wrong_shape", ["problem=helmholtz"],
     "does not fit the network of its card"),
    ("wrong_inputs", ["problem=helmholtz"], "network.layers [3, 64, 64, 64, 1] does not fit helmholtz"),
    ("helm", ["problem=burgers"], "base model is for problem 'helmholtz', not 'burgers'"),
    ("not_json", ["problem=helmholtz"], "is not valid JSON"),
    ("no_network", ["problem=helmholtz"], "lacks network"),
    ("bad_layers", ["problem=helmholtz"], "key 'network.layers' is 'abc'; expected a list of at least 2 integers"),
    ("bad_activation", ["problem=helmholtz"], "key 'network.activation' is 'swish9'; expected one of"),
    ("bad_sha_format", ["problem=helmholtz"], "key 'weights_sha256' is 'xyz'; expected a sha256 digest"),
    ("unknown_family", ["problem=helmholtz"], "unknown problem 'navier_stokes'"),
    ("bad_coefficient", ["problem=helmholtz"], "coefficient k=-1.0 is out of range"),
    ("list_card", ["problem=helmholtz"], "must hold a JSON object"),
    ("nonfinite", ["problem=helmholtz"], "holds 1 non-finite value (NaN or inf) of 128; weights must be finite"),
]


# The default run keeps one case per kind of check (each case composes the config up to three times:
# about 0.5 s); the whole catalogue runs with the integration tests (.ci/run runs both).
DEFAULT_CLI = {"problem=burger", "problem.nu=nan", "method=lora method.rank=2.5", "method=lora method.lr=fast",
               "seed=-1", "problem.nu=[0.1", "+foo=1", "~problem", "dtype=float16", "out="}
DEFAULT_BASE = {"truncated", "wrong_inputs", "not_json", "nonfinite"}


def _cases(cases: list, ids: list[str], keep: set[str]) -> list:
    """``cases`` as pytest params, those not in ``keep`` marked integration."""
    out = []
    for case, name in zip(cases, ids):
        values, marks = (case.values, list(case.marks)) if hasattr(case, "values") else (case, [])
        out.append(pytest.param(*values, id=name, marks=marks + ([] if name in keep else [pytest.mark.integration])))
    assert keep <= set(ids), keep - set(ids)
    return out


@pytest.mark.parametrize("args,message", _cases(CLI_CASES, [" ".join((c.values if hasattr(c, "values") else c)[0])
                                                            for c in CLI_CASES], DEFAULT_CLI))
def test_cli_bad_value(args, message, tmp_path, monkeypatch, capsys):
    code, _, err = cli([*FAST, f"out={tmp_path / 'run'}", *args], monkeypatch, capsys, tmp_path)
    assert_one_line(code, err, message)
    assert list(tmp_path.iterdir()) == []  # no run directory (Hydra's .hydra/ included), no outputs/


@pytest.mark.parametrize("name,args,message", _cases(BASE_CASES, [c[0] for c in BASE_CASES], DEFAULT_BASE))
def test_cli_bad_base(name, args, message, files, tmp_path, monkeypatch, capsys):
    before = snapshot(files.helm.parent)
    code, _, err = cli([*FAST, "method=lora", f"base={getattr(files, name)}", f"out={tmp_path / 'run'}", *args],
                       monkeypatch, capsys, tmp_path)
    assert_one_line(code, err, message)
    assert str(getattr(files, name)) in err or name == "helm"  # the line names the file
    assert list(tmp_path.iterdir()) == []
    assert snapshot(files.helm.parent) == before  # nothing read was changed


@pytest.mark.integration  # a whole run, then a refused second one (the library-level check: tests/test_rundir.py)
def test_cli_refuses_an_out_holding_a_previous_run(tmp_path, monkeypatch, capsys):
    """A previous run is never overwritten, not even its .hydra/config.yaml (issue 14, item 4)."""
    out = tmp_path / "run"
    args = ["problem=helmholtz", "method=lora", *FAST, f"out={out}"]
    code, stdout, err = cli(args, monkeypatch, capsys, tmp_path)
    assert code == 0, err
    assert (out / "summary.json").is_file() and (out / ".hydra" / "config.yaml").is_file()
    marker = json.loads((out / ".pinn_lora_run.json").read_text())
    assert marker["kind"] == "run" and marker["status"] == "finished" and marker["pid"] == os.getpid()
    before = snapshot(out)
    code, _, err = cli([*args, "seed=5"], monkeypatch, capsys, tmp_path)
    assert_one_line(code, err, f"out={out} already holds a previous run (finished; pid {os.getpid()}")
    assert "or resume=true to continue it" in err
    assert snapshot(out) == before
    # a directory holding files pinn_lora did not write (no marker), Hydra's old config included
    only = tmp_path / "only_hydra"
    (only / ".hydra").mkdir(parents=True)
    (only / ".hydra" / "config.yaml").write_text("seed: 0\n")
    code, _, err = cli([*args[:-1], f"out={only}"], monkeypatch, capsys, tmp_path)
    assert_one_line(code, err, f"out={only} is not empty (.hydra) and was not created by pinn_lora")
    assert (only / ".hydra" / "config.yaml").read_text() == "seed: 0\n" and len(list(only.rglob("*"))) == 2
    # resume=true asks for it: the check lets it through, and whatever happens the run is not deleted
    code, _, err = cli([*args, "resume=true"], monkeypatch, capsys, tmp_path)
    assert "already holds a previous run" not in err and "Traceback" not in err
    assert all((out / name).is_file() for name in ("summary.json", "metrics.jsonl", "adapter.safetensors"))


@pytest.mark.integration  # resume through the command line
def test_cli_refused_resume_rewrites_nothing(tmp_path, monkeypatch, capsys):
    """A refused resume=true (another method) rewrites nothing: not .hydra/config.yaml, not overrides.yaml,
    not the marker (issue 14, item 5; on main Hydra rewrote both files before the task refused)."""
    out = tmp_path / "run"
    args = ["problem=helmholtz", "method=lora", *FAST, "steps=2", f"out={out}"]
    args.remove("checkpoint_every=0")
    code, _, err = cli([*args, "checkpoint_every=1"], monkeypatch, capsys, tmp_path)
    assert code == 0, err
    (out / "summary.json").unlink()  # as if killed before the end
    before = snapshot(out)
    code, _, err = cli([*args, "checkpoint_every=1", "method=odelora", "resume=true"], monkeypatch, capsys, tmp_path)
    assert_one_line(code, err, "was started with other settings (method.name: 'lora' -> 'odelora'")
    assert snapshot(out) == before


def test_cli_refuses_a_directory_it_did_not_create(tmp_path, monkeypatch, capsys):
    """out= an existing non-empty folder without pinn_lora's marker (a home directory, notes): refused before
    anything is written, whatever the rest of the input (issue 14, item 4)."""
    notes = tmp_path / "notes"
    (notes / "plots").mkdir(parents=True)
    (notes / "readme.txt").write_text("mine")
    (notes / "plots" / "loss.png").write_bytes(b"my figure")
    before = snapshot(notes)
    for extra in (["problem=helmholtz"], ["problem.nu=-1"]):
        code, _, err = cli([*FAST, f"out={notes}", *extra], monkeypatch, capsys, tmp_path)
        assert_one_line(code, err, f"out={notes} is not empty (plots, readme.txt) and was not created by pinn_lora "
                                   "(no .pinn_lora_run.json); nothing is written into it")
        assert snapshot(notes) == before and sorted(p.name for p in notes.iterdir()) == ["plots", "readme.txt"]
    with pytest.raises(pinn_lora.store.rundir.RunDirError, match="was not created by pinn_lora"):
        pinn_lora.adapt_to("helmholtz", pinn_lora.get_problem("helmholtz", k=3.0), "lora", steps=1, n_points=16,
                           lbfgs_steps=0, device="cpu", progress=False, plots=False, run_dir=notes)
    assert snapshot(notes) == before


def test_cli_bad_input_creates_and_deletes_nothing(tmp_path, monkeypatch, capsys):
    """Bad input is found before the run directory is claimed: no directory is created (nor Hydra's .hydra/),
    none is removed (issue 14, item 1 and the required shape)."""
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = cli([*FAST, f"out={empty}", "dtype=float16"], monkeypatch, capsys, tmp_path)
    assert_one_line(code, err, "dtype='float16'")
    assert empty.is_dir() and list(empty.iterdir()) == []  # nothing written into it
    code, _, err = cli([*FAST, f"out={tmp_path / 'a' / 'b' / 'run'}", "problem.nu=-1"], monkeypatch, capsys, tmp_path)
    assert_one_line(code, err, "nu=-1 is out of range")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]  # no a/b/run, no parents


def test_cli_bad_input_never_deletes_a_run_written_meanwhile(tmp_path, monkeypatch, capsys):
    """Two runs resolved the same out= (the default's ${now:} second): while the bad one checks its input the
    good one fills the directory. The bad one stops with exit 2 and deletes nothing (issue 14, item 1; main
    removed the directory as 'created by this invocation')."""
    out = tmp_path / "run"
    real = adapt_cli.check_task_config

    def meanwhile(cfg):
        out.mkdir(exist_ok=True)  # the other run writes into the directory
        (out / "metrics.jsonl").write_text('{"step": 0, "loss": 1.0}\n')
        real(cfg)

    monkeypatch.setattr(adapt_cli, "check_task_config", meanwhile)
    code, _, err = cli([*FAST, "plots=maybe", f"out={out}"], monkeypatch, capsys, tmp_path)
    assert_one_line(code, err, "plots='maybe' must be true or false")
    assert [p.name for p in out.iterdir()] == ["metrics.jsonl"]


def test_cli_default_out_is_not_created_on_bad_input(tmp_path, monkeypatch, capsys):
    """Without out=: runs/<problem>/<method>/<time> is not created (Hydra is pointed at a directory that exists)."""
    code, _, err = cli([*FAST, "method=lora", "method.alpha=-1"], monkeypatch, capsys, tmp_path)
    assert_one_line(code, err, "method lora: option alpha=-1 must be > 0")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "runs").mkdir()  # an existing runs/ stays
    code, _, err = cli([*FAST, "method=lora", "method.alpha=-1"], monkeypatch, capsys, tmp_path)
    assert code == 2 and [p.name for p in tmp_path.iterdir()] == ["runs"] and list((tmp_path / "runs").iterdir()) == []


def test_cli_out_not_writable(tmp_path, monkeypatch, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    code, _, err = cli([*FAST, f"out={afile}"], monkeypatch, capsys, tmp_path)
    assert_one_line(code, err, f"out={afile} is a file; give a directory that can be created or written")
    code, _, err = cli([*FAST, f"out={afile / 'run'}"], monkeypatch, capsys, tmp_path)
    assert_one_line(code, err, f"out={afile / 'run'} cannot be created: {afile} is a file, not a directory")
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        target = locked / "run"
    elif Path("/sys").is_dir():  # root writes anywhere but on read-only file systems
        target = Path("/sys/pinn_lora_test_run")
    else:
        pytest.skip("no directory that root cannot write")
    try:
        code, _, err = cli([*FAST, f"out={target}"], monkeypatch, capsys, tmp_path)
    finally:
        if os.geteuid() != 0:
            locked.chmod(0o755)
    assert_one_line(code, err, f"out={target} is not writable (")
    assert "choose a directory you can write to" in err and not target.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", *(["locked"] if os.geteuid() != 0 else [])]


def test_cli_sweep_dir_holding_a_sweep_is_refused(tmp_path, monkeypatch, capsys):
    sweep = tmp_path / "sweep"
    (sweep / "helmholtz" / "lora" / "0").mkdir(parents=True)
    (sweep / "helmholtz" / "lora" / "0" / "summary.json").write_text("{}")
    code, _, err = cli(["-m", *FAST, "method=lora", "seed=0,1", f"hydra.sweep.dir={sweep}"], monkeypatch, capsys,
                       tmp_path)
    assert_one_line(code, err, f"hydra.sweep.dir={sweep} is not empty (helmholtz) and was not created by pinn_lora")
    pinn_lora.store.rundir.claim(sweep / "new", kind="sweep").release()
    code, _, err = cli(["-m", *FAST, "method=lora", "seed=0,1", f"hydra.sweep.dir={sweep / 'new'}"], monkeypatch,
                       capsys, tmp_path)
    assert_one_line(code, err, f"hydra.sweep.dir={sweep / 'new'} already holds a previous sweep (finished; pid")


def test_cli_sweep_stopped_by_bad_input_deletes_nothing(tmp_path, monkeypatch, capsys):
    """The sweep directory is claimed before Hydra starts (its jobs' values are checked by each job): a sweep
    stopped by a job's bad input keeps it, marked failed, with Hydra's multirun.yaml and the job's empty
    directory; the job claimed nothing."""
    sweep = tmp_path / "sweep"
    code, _, err = cli(["-m", *FAST, "method=lora", "method.rank=0,-1", f"hydra.sweep.dir={sweep}"], monkeypatch,
                       capsys, tmp_path)
    assert_one_line(code, err, "method lora: option rank=0 must be > 0")
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "sweep", "sweep/.pinn_lora_run.json", "sweep/burgers", "sweep/burgers/lora", "sweep/burgers/lora/0",
        "sweep/multirun.yaml"]
    marker = json.loads((sweep / ".pinn_lora_run.json").read_text())
    assert marker["kind"] == "sweep" and marker["status"] == "failed"


@pytest.mark.integration  # a sweep
def test_cli_sweep_names_its_diverged_jobs(tmp_path, monkeypatch, capsys):
    """A sweep in which a job diverged runs every job, then names the diverged ones in one line and exits 3
    (issue 14, item 20; main exited 0)."""
    sweep = tmp_path / "sweep"
    code, out, err = cli(["-m", *FAST, "steps=10", "problem=helmholtz", "method=lora", "solver=method",
                          "method.lr=1e8,1e-3", f"hydra.sweep.dir={sweep}"], monkeypatch, capsys, tmp_path)
    assert code == 3, err
    assert f"sweep {sweep}: 2 jobs: 1 completed, 1 diverged" in out or f"sweep {sweep}: 2 jobs: 1 diverged, " in out
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert lines[-1] == "error: 1 of 2 jobs diverged: helmholtz/lora/0 (see their summary.json)", err


def test_cli_debug_shows_the_exception(tmp_path, monkeypatch, capsys):
    """debug=true: the exception propagates (Hydra does not shorten it); no run directory was created."""
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(CoefficientError, match=r"nu=-1 is out of range"):
        cli([*FAST, f"out={tmp_path / 'run'}", "problem.nu=-1", "debug=true"], monkeypatch, capsys, tmp_path)
    assert list(tmp_path.iterdir()) == [] and "HYDRA_FULL_ERROR" not in os.environ
    capsys.readouterr()
    code, _, err = cli([*FAST, f"out={tmp_path / 'run'}", "debug=yes"], monkeypatch, capsys, tmp_path)
    assert_one_line(code, err, "debug='yes' must be true or false")


ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
ENV.pop("HYDRA_FULL_ERROR", None)


def _subprocess(*args, cwd):
    return subprocess.run([sys.executable, "-m", "pinn_lora.adapt", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, env=ENV, timeout=300)


@pytest.mark.integration  # three subprocesses
def test_cli_real_process_exit_codes(tmp_path):
    """The real entry point: one line and exit 2 before Hydra starts and inside the task (no run directory
    created), and debug=true's traceback (exit 1)."""
    res = _subprocess("problem.nu=[0.1", cwd=tmp_path)
    assert_one_line(res.returncode, res.stderr, "malformed override 'problem.nu=[0.1'")
    res = _subprocess(*FAST, "dtype=float16", f"out={tmp_path / 'run'}", cwd=tmp_path)
    assert_one_line(res.returncode, res.stderr, "dtype='float16': choose one of float64, float32")
    assert list(tmp_path.iterdir()) == []
    res = _subprocess(*FAST, "dtype=float16", "debug=true", f"out={tmp_path / 'run'}", cwd=tmp_path)
    assert res.returncode == 1 and "Traceback (most recent call last)" in res.stderr
    assert "ConfigError: dtype='float16'" in res.stderr and "resolve_dtype" in res.stderr
    assert list(tmp_path.iterdir()) == []


# ---- Python API: the exception type and its message -------------------------------------------------------
def _adapt(**kw):
    opts = {"steps": 1, "n_points": 16, "device": "cpu", "progress": False, "plots": False, "lbfgs_steps": 0,
            "continuation": "off"}
    base = kw.pop("base", "helmholtz")
    method = kw.pop("method", "lora")
    problem = kw.pop("problem", None) or pinn_lora.get_problem("helmholtz", k=3.0)
    return pinn_lora.adapt_to(base, problem, method, **{**opts, **kw})


API_CASES = [
    # names
    ("get_problem unknown", lambda f: pinn_lora.get_problem("burger"), UnknownNameError,
     r"unknown problem 'burger'; valid problems: allen_cahn, burgers, helmholtz"),
    ("get_method unknown", lambda f: pinn_lora.get_method("lorra"), UnknownNameError,
     r"unknown method 'lorra'; valid methods: asymlora"),
    ("adapt unknown method", lambda f: _adapt(method="lorra"), UnknownNameError, r"unknown method 'lorra'"),
    ("scheme", lambda f: pinn_lora.get_method("odelora", scheme="rk5"), MethodOptionError,
     r"option scheme='rk5' is not one of: euler, heun, midpoint, rk4, bs23, dopri5"),
    ("unknown option", lambda f: pinn_lora.get_method("lora", rnk=3), MethodOptionError,
     r"method lora: unknown option rnk; options are: alpha, final_ratio, lr, rank"),
    ("targets", lambda f: pinn_lora.get_method("lora", targets="some"), MethodOptionError,
     r"targets='some' must be one of all, hidden, output or a list of layer indices"),
    ("sampler", lambda f: _adapt(sampler="random"), ValueError, r"sampler='random'; choose one of pseudo"),
    # coefficients
    ("nu zero", lambda f: pinn_lora.get_problem("burgers", nu=0.0), CoefficientError,
     r"burgers: coefficient nu=0.0 is out of range \(allowed: 0.00031831 <= nu <= 100: the range in which the "
     r"Cole–Hopf reference solution is accurate and takes seconds\)"),
    ("nu too small for the reference", lambda f: pinn_lora.get_problem("burgers", nu=1e-12), CoefficientError,
     r"nu=1e-12 is out of range \(allowed: 0.00031831 <= nu <= 100"),
    ("nu too large for the reference", lambda f: pinn_lora.get_problem("burgers", nu=1e6), CoefficientError,
     r"nu=1000000.0 is out of range"),
    ("allen_cahn interface unresolved", lambda f: pinn_lora.get_problem("allen_cahn", d=1e-5, gamma=5.0),
     CoefficientError, r"allen_cahn: d=1e-05, gamma=5 make an interface of width sqrt\(2 d/gamma\)=0.002, narrower "
     r"than the reference solution resolves \(0.00586: Chebyshev degree 2048\); choose d >= 1.72e-05 x gamma"),
    ("nu negative", lambda f: pinn_lora.get_problem("burgers", nu=-1), CoefficientError, r"nu=-1 is out of range"),
    ("nu nan", lambda f: pinn_lora.get_problem("burgers", nu=float("nan")), CoefficientError,
     r"nu=nan is out of range"),
    ("nu inf", lambda f: pinn_lora.get_problem("burgers", nu=math.inf), CoefficientError, r"nu=inf is out of range"),
    ("nu text", lambda f: pinn_lora.get_problem("burgers", nu="abc"), CoefficientError,
     r"nu='abc' is not a number \(allowed: 0.00031831 <= nu <= 100\)"),
    ("k resonance", lambda f: pinn_lora.get_problem("helmholtz", k=math.pi / math.sqrt(2)), CoefficientError,
     r"k=2.22144 is within 5% of the resonance k²=π²\(1²\+1²\)/4"),
    ("wrong coefficient", lambda f: pinn_lora.get_problem("burgers", gamma=3.0), CoefficientError,
     r"burgers: unknown coefficient gamma; the coefficients are: nu \(0.00031831 <= nu <= 100\)"),
    # rank, alpha, learning rate, tolerances
    ("rank zero", lambda f: pinn_lora.get_method("lora", rank=0), MethodOptionError, r"option rank=0 must be > 0"),
    ("rank negative", lambda f: pinn_lora.get_method("dora", rank=-3), MethodOptionError,
     r"method dora: option rank=-3 must be > 0"),
    ("rank float", lambda f: pinn_lora.get_method("lora", rank=2.5), MethodOptionError,
     r"option rank=2.5 must be an integer"),
    ("rank too large", lambda f: _adapt(rank=100), MethodOptionError,
     r"rank=100 is larger than any adapted layer allows \(at most 64"),
    ("alpha zero", lambda f: pinn_lora.get_method("lora", alpha=0.0), MethodOptionError, r"alpha=0.0 must be > 0"),
    ("alpha text", lambda f: pinn_lora.get_method("lora", alpha="x"), MethodOptionError,
     r"alpha='x' must be a finite number"),
    ("lr zero", lambda f: pinn_lora.get_method("lora", lr=0.0), MethodOptionError, r"option lr=0.0 must be > 0"),
    ("lr negative", lambda f: _adapt(lr=-1e-3), MethodOptionError, r"method lora: option lr=-0.001 must be > 0"),
    ("lr nan", lambda f: pinn_lora.get_method("odelora", lr=float("nan")), MethodOptionError,
     r"lr=nan must be a finite number"),
    ("lr inf", lambda f: pinn_lora.get_method("lora", lr=math.inf), MethodOptionError,
     r"lr=inf must be a finite number"),
    ("lr text", lambda f: pinn_lora.get_method("lora", lr="fast"), MethodOptionError,
     r"lr='fast' must be a finite number"),
    ("rtol zero", lambda f: pinn_lora.get_method("odelora", scheme="bs23", rtol=0.0), MethodOptionError,
     r"option rtol=0.0 must be > 0"),
    ("atol negative", lambda f: pinn_lora.get_method("odelora", atol=-1e-6), MethodOptionError,
     r"atol=-1e-06 must be > 0"),
    ("steps negative", lambda f: _adapt(steps=-1), ConfigError, r"steps=-1 must be an integer >= 0"),
    ("seed 2**70", lambda f: _adapt(seed=2**70), ConfigError,  # issue 14, items 18-19
     r"seed=1180591620717411303424 is too large: a seed is an integer from 0 to 2147483647 \(2\*\*31 - 1\)"),
    ("problem as a string", lambda f: pinn_lora.adapt_to("helmholtz", "helmholtz", "lora"), TypeError,
     r"adapt_to: problem must be a problem object, e.g. pinn_lora.get_problem\('helmholtz'\) \(its coefficients are "
     r"the target\); got str 'helmholtz'"),
    ("linears a plain list", lambda f: pinn_lora.attach(_plain_list_net(), "lora"), TypeError,
     r"attach: expected a torch.nn.Module whose 'linears' is a ModuleList of nn.Linear layers"),
    ("attach twice", lambda f: pinn_lora.attach(pinn_lora.attach(pinn_lora.load_base("helmholtz")[0], "lora"), "lora"),
     ValueError, r"attach: this network already has a method attached \(PINN from .* base \[2, 64, 64, 64, 1\]"),
    ("device object without CUDA", lambda f: _adapt(device=torch.device("cuda")), ConfigError,
     r"device=device\(type='cuda'\) requested but no CUDA device is available"),
    ("device not a name", lambda f: _adapt(device=3), TypeError, r"device=3: give a string"),
    ("run_dir a file", lambda f: _adapt(run_dir=f.a_file), pinn_lora.store.rundir.RunDirError,
     r"run directory .*a_file is a file; give a directory"),
    ("run_dir not a path", lambda f: _adapt(run_dir=3), TypeError, r"adapt_to: run_dir must be a path"),
    ("run_dir dangling link", lambda f: _adapt(run_dir=f.dangling), pinn_lora.store.rundir.RunDirError,  # item 17
     r"run directory .*dangling is a symbolic link to .*nowhere, which does not exist; give a directory"),
    ("load_adapter no activation", lambda f: pinn_lora.load_adapter(f.a_no_activation), CheckpointError,  # item 22
     r"card .*a_no_activation/card.json: base.network names no activation, so the base network cannot be rebuilt"),
    ("steps text", lambda f: _adapt(steps="10"), ConfigError, r"steps='10' must be an integer >= 0"),
    ("n_points zero", lambda f: _adapt(n_points=0), ConfigError, r"n_points=0 must be an integer >= 1"),
    ("n_points beyond memory", lambda f: _adapt(n_points=10**12, sampling="uniform"), ConfigError,  # issue 14, item 14
     r"n_points=1000000000000 needs at least 2.7 PB of memory for one step \(the points and the network's "
     r"activations in float64\), more than the .* of cpu; use fewer points \(fewer than \d+\)"),
    # device, float type, run directory
    pytest.param("cuda", lambda f: _adapt(device="cuda"), ConfigError,
                 r"device='cuda' requested but no CUDA device is available", marks=NO_CUDA),
    ("dtype", lambda f: _adapt(dtype="float16"), ConfigError, r"dtype='float16': choose one of float64, float32"),
    ("run_dir holds a run", lambda f: _adapt(run_dir=f.previous_run), pinn_lora.store.rundir.RunDirError,
     r"run directory .*previous_run already holds a previous run \(finished; pid"),
    ("run_dir not pinn_lora's", lambda f: _adapt(run_dir=f.foreign), pinn_lora.store.rundir.RunDirError,
     r"run directory .*foreign is not empty \(notes.txt\) and was not created by pinn_lora"),
    # base models: load_base and adapt_to(base=<path>)
    ("load_base unknown", lambda f: pinn_lora.load_base("burgerz"), CheckpointError,
     r"no base model 'burgerz': not a shipped name \(allen_cahn, burgers, helmholtz\)"),
    ("load_base missing", lambda f: pinn_lora.load_base(f.missing), CheckpointError, r"no base model"),
    ("load_base no weights", lambda f: pinn_lora.load_base(f.no_weights), CheckpointError,
     r"its weights file .*no_weights.safetensors is missing"),
    ("load_base truncated", lambda f: pinn_lora.load_base(f.truncated), CheckpointError,
     r"truncated.safetensors does not match its card's sha256 \(file changed or truncated\)"),
    ("load_base wrong hash", lambda f: pinn_lora.load_base(f.wrong_hash), CheckpointError,
     r"does not match its card's sha256.*the card says 000000000000"),
    ("load_base wrong shape", lambda f: pinn_lora.load_base(f.wrong_shape), CheckpointError,
     r"does not fit the network of its card .*wrong_shape.json \(layers \[2, 32, 32, 32, 1\]\): "
     r"linears.0.weight is \(64, 2\) in the file, \(32, 2\) expected"),
    ("load_base not json", lambda f: pinn_lora.load_base(f.not_json), CheckpointError,
     r"card .*not_json.json is not valid JSON"),
    ("load_base no network", lambda f: pinn_lora.load_base(f.no_network), CheckpointError,
     r"card .*no_network.json lacks network"),
    ("load_base bad layers", lambda f: pinn_lora.load_base(f.bad_layers), CheckpointError,
     r"card .*bad_layers.json: key 'network.layers' is 'abc'; expected a list of at least 2 integers >= 1"),
    ("load_base unknown family", lambda f: pinn_lora.load_base(f.unknown_family), CheckpointError,
     r"card .*unknown_family.json: unknown problem 'navier_stokes'; valid problems"),
    ("load_base bad coefficient", lambda f: pinn_lora.load_base(f.bad_coefficient), CheckpointError,
     r"card .*bad_coefficient.json: helmholtz: coefficient k=-1.0 is out of range"),
    ("adapt base wrong family", lambda f: _adapt(base=f.helm, problem=pinn_lora.get_problem("burgers")), ConfigError,
     r"base model is for problem 'helmholtz', not 'burgers'"),
    ("adapt base truncated", lambda f: _adapt(base=f.truncated), CheckpointError, r"does not match its card's sha256"),
    ("save_base bad card", lambda f: pinn_lora.save_base(pinn_lora.load_base("helmholtz")[0], {"coefficients": {}},
                                                        f.missing.parent / "never"), CheckpointError,
     r"save_base: the card for .*never.json lacks problem"),
    # adapters: load_adapter
    ("load_adapter missing", lambda f: pinn_lora.load_adapter(f.missing), CheckpointError,
     r"card not found: .*nothing_here/card.json"),
    ("load_adapter empty dir", lambda f: pinn_lora.load_adapter(f.a_empty), CheckpointError, r"card not found"),
    ("load_adapter non-finite", lambda f: pinn_lora.load_adapter(f.a_nonfinite), CheckpointError,
     r"adapter.safetensors: \S+ holds 1 non-finite value \(NaN or inf\) of \d+; weights must be finite"),
    ("load_base non-finite", lambda f: pinn_lora.load_base(f.nonfinite), CheckpointError,
     r"nonfinite.safetensors: \S+ holds 1 non-finite value \(NaN or inf\)"),
    ("save_base non-finite", lambda f: pinn_lora.save_base(nan_network(), {"problem": "helmholtz"}, f.missing),
     ValueError, r"save_base: .*nothing_here.safetensors: \S+ holds 1 non-finite value \(NaN or inf\)"),
    ("load_adapter no weights", lambda f: pinn_lora.load_adapter(f.a_no_weights), CheckpointError,
     r"weights file not found: .*a_no_weights/adapter.safetensors"),
    ("load_adapter truncated", lambda f: pinn_lora.load_adapter(f.a_truncated), CheckpointError,
     r"cannot read .*a_truncated/adapter.safetensors as safetensors .*only safetensors files are accepted"),
    ("load_adapter wrong hash", lambda f: pinn_lora.load_adapter(f.a_wrong_hash), CheckpointError,
     r"adapter.safetensors does not match its card's sha256"),
    ("load_adapter wrong family", lambda f: pinn_lora.load_adapter(f.adapter, base="burgers"), AdapterMismatchError,
     r"the base given has layers \[2, 64, 64, 64, 64, 1\] instead of \[2, 64, 64, 64, 1\]"),
    ("load_adapter wrong base weights", lambda f: pinn_lora.load_adapter(
        f.adapter, base=build_network([2, 64, 64, 64, 1], "sin", seed=3)), AdapterMismatchError,
     r"different weights"),
    ("load_adapter wrong shape", lambda f: pinn_lora.load_adapter(f.a_wrong_rank), AdapterMismatchError,
     r"adapter.safetensors does not fit method lora attached to \[2, 64, 64, 64, 1\]"),
    ("load_adapter bad rank", lambda f: pinn_lora.load_adapter(f.a_bad_rank), CheckpointError,
     r"card .*a_bad_rank/card.json: method lora: option rank=-2 must be > 0"),
    ("load_adapter unknown method", lambda f: pinn_lora.load_adapter(f.a_unknown_method), CheckpointError,
     r"card .*card.json: unknown method 'lorax'; valid methods"),
    ("load_adapter no kind", lambda f: pinn_lora.load_adapter(f.a_no_kind), CheckpointError,
     r"card.json is not a pinn_lora adapter card \(kind=None; expected 'pinn_lora.adapter'\)"),
    ("load_adapter bad layers", lambda f: pinn_lora.load_adapter(f.a_bad_layers), CheckpointError,
     r"card .*card.json: key 'adapted_layers' is 'all'; expected a list of"),
    ("load_adapter no base", lambda f: pinn_lora.load_adapter(f.a_no_base), CheckpointError,
     r"card .*a_no_base/card.json lacks base"),
    ("load_adapter nan coefficient", lambda f: pinn_lora.load_adapter(f.a_bad_coefficient), CheckpointError,
     r"key 'coefficients.k' is nan; expected a finite number"),
]


def _plain_list_net():
    net = build_network([2, 8, 1], "tanh", seed=0)
    linears = list(net.linears)
    del net.linears
    net.__dict__["linears"] = linears  # a plain list, not a ModuleList (torch refuses the assignment)
    return net


MULTILINE = {"load_adapter wrong shape"}  # see test_api_adapter_shape_mismatch_is_one_line


def _ids(cases) -> list[str]:
    return [(c.values if hasattr(c, "values") else c)[0] for c in cases]


@pytest.mark.parametrize("name,call,exc,match", API_CASES, ids=_ids(API_CASES))
def test_api_bad_input(name, call, exc, match, files):
    with pytest.raises(exc, match=match) as info:
        call(files)
    if name not in MULTILINE:
        assert "\n" not in str(info.value), str(info.value)  # one line


def test_api_adapter_shape_mismatch_is_one_line(files):
    with pytest.raises(AdapterMismatchError) as info:
        pinn_lora.load_adapter(files.a_wrong_rank)
    assert "\n" not in str(info.value)


def test_api_bad_input_writes_nothing(files, tmp_path):
    """adapt_to(run_dir=...) stops on a bad value before creating the run directory."""
    for kw in ({"rank": 0}, {"steps": -1}, {"dtype": "float16"}, {"base": files.truncated}, {"rank": 100}):
        with pytest.raises((ValueError, CheckpointError)):
            _adapt(run_dir=tmp_path / "run", **kw)
        assert list(tmp_path.iterdir()) == [], kw


# ---- tampered adapter cards (issue 14, item 9): every field of a saved card is bound to its weights -----------
def _set(path: str, value):
    def edit(card: dict) -> None:
        *parents, last = path.split(".")
        where = card
        for key in parents:
            where = where[key]
        if value is _REMOVE:
            del where[last]
        else:
            where[last] = value
    return edit


_REMOVE = object()
BOUND = r"card .*card.json was changed after it was saved with adapter.safetensors: "
TAMPER_CASES = [  # (field, new value, what the one line says)
    ("kind", "pinn_lora.adapter2", r"is not a pinn_lora adapter card"),  # checked before anything else
    ("package_version", "9.9.9", BOUND + r"package_version is '9.9.9' \(saved: '0.1.0'\)"),
    ("method.name", "rslora", BOUND + r"method.name is 'rslora' \(saved: 'lora'\)"),
    ("method.lr", 0.03, BOUND + r"method.lr is 0.03 \(saved: 0.003\)"),
    ("method.schedule", "constant", BOUND + r"method.schedule is 'constant'"),
    ("method.final_ratio", 0.2, BOUND + r"method.final_ratio is 0.2"),
    ("method.rank", 2, BOUND + r"method.rank is 2 \(saved: 4\)"),
    ("method.alpha", 8.0, BOUND + r"method.alpha is 8.0 \(saved: 4.0\)"),
    ("method.targets", "hidden", BOUND + r"method.targets is 'hidden' \(saved: 'all'\)"),
    ("adapted_layers", [0, 1, 2], BOUND + r"adapted_layers is \[0, 1, 2\] \(saved: \[0, 1, 2, 3\]\)"),
    ("layer_ranks.0", 3, BOUND + r"layer_ranks.0 is 3 \(saved: 2\)"),
    ("trainable_parameters", 1, BOUND + r"trainable_parameters is 1 \(saved: 1221\)"),
    ("problem", "burgers", r"card .*card.json: burgers: unknown coefficient k"),  # checked by the registry first
    ("coefficients.k", 4.0, BOUND + r"coefficients.k is 4.0 \(saved: 3.0\)"),
    ("base.coefficients.k", 2.0, BOUND + r"base.coefficients.k is 2.0 \(saved: 1.0\)"),
    ("base.network.activation", "tanh", BOUND + r"base.network.activation is 'tanh' \(saved: 'sin'\)"),
    ("base.network.layers", [2, 64, 64, 1], BOUND + r"base.network.layers is \[2, 64, 64, 1\]"),
    ("base.weights_sha256", "0" * 64, BOUND + r"base.weights_sha256 is '0000"),
    ("base.fingerprint", "0" * 64, BOUND + r"base.fingerprint is '0000"),
    ("contents", "only the factors", BOUND + r"contents is 'only the factors'"),
    ("contents", _REMOVE, BOUND + r"contents was removed \(saved: 'full adapted state dict"),
    ("note", "added later", BOUND + r"note was added \('added later'\)"),
    ("weights_sha256", "e" * 64, r"adapter.safetensors does not match its card's sha256"),  # the file's own hash
]


@pytest.mark.parametrize("field,value,message", TAMPER_CASES,
                         ids=[f"{c[0]} removed" if c[1] is _REMOVE else c[0] for c in TAMPER_CASES])
def test_a_tampered_card_is_refused(field, value, message, files, tmp_path):
    """Editing any field of a saved card.json (alpha 4 -> 8, lora -> rslora, the target coefficient ...) is
    refused at load with one line naming the field, its value and the saved one (main loaded them silently)."""
    d = tmp_path / "a"
    shutil.copytree(files.adapter, d)
    card = json.loads((d / "card.json").read_text())
    _set(field, value)(card)
    (d / "card.json").write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match=message) as info:
        pinn_lora.load_adapter(d)
    assert "\n" not in str(info.value)


def test_an_unbound_card_loads_with_one_warning(files, tmp_path):
    """A card written before cards were bound to their weights (no hash in the file's metadata) loads, with
    one warning line."""
    from safetensors.torch import load_file, save

    d = tmp_path / "old"
    shutil.copytree(files.adapter, d)
    data = save(load_file(str(d / "adapter.safetensors")))  # the same tensors, no metadata
    (d / "adapter.safetensors").write_bytes(data)
    card = json.loads((d / "card.json").read_text())
    (d / "card.json").write_text(json.dumps({**card, "weights_sha256": hashlib.sha256(data).hexdigest()}))
    with pytest.warns(UserWarning, match=r"card.json: an adapter card written before cards were bound") as got:
        pinn_lora.load_adapter(d)
    assert len(got) == 1 and "\n" not in str(got[0].message)


def test_a_base_card_is_bound_to_its_weights(files, tmp_path):
    """A base model's card edited into another valid card (other coefficients, the file's hash kept in step)
    is refused, naming the field; the shipped bases are bound; a base written before the binding loads with
    one warning line."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save

    from pinn_lora.store.tensors import CARD_HASH_KEY

    for name in pinn_lora.store.zoo.shipped():
        with safe_open(str(pinn_lora.store.zoo.ZOO_DIR / f"{name}.safetensors"), "pt") as fh:
            assert CARD_HASH_KEY in (fh.metadata() or {}), name
    card = json.loads(Path(f"{files.helm}.json").read_text())
    stem = tmp_path / "edited"
    shutil.copy(f"{files.helm}.safetensors", f"{stem}.safetensors")
    Path(f"{stem}.json").write_text(json.dumps({**card, "coefficients": {"k": 2.5}}))
    with pytest.raises(pinn_lora.store.tensors.CheckpointError,
                       match=r"edited.json was changed after it was saved with edited.safetensors: coefficients.k "
                             r"is 2.5 \(saved: 1.0\)"):
        pinn_lora.load_base(stem)
    data = save(load_file(f"{files.helm}.safetensors"))  # the same tensors, no metadata
    old = tmp_path / "old"
    Path(f"{old}.safetensors").write_bytes(data)
    Path(f"{old}.json").write_text(json.dumps({**card, "weights_sha256": hashlib.sha256(data).hexdigest()}))
    with pytest.warns(UserWarning, match=r"old.json: a base model card written before cards were bound") as got:
        pinn_lora.load_base(old)
    assert len(got) == 1


def test_cli_out_a_dangling_symlink(tmp_path, monkeypatch, capsys):
    """out= a symbolic link whose target does not exist: one line (issue 14, item 17; main: Hydra's
    FileExistsError traceback); the link is left as it was."""
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "missing")
    code, _, err = cli([*FAST, f"out={link}"], monkeypatch, capsys, tmp_path)
    assert_one_line(code, err, f"out={link} is a symbolic link to {tmp_path / 'missing'}, which does not exist")
    assert link.is_symlink() and not (tmp_path / "missing").exists()


def test_api_accepts_numpy_integers_torch_dtypes_and_load_base_tuples():
    """Issue 14, item 19 (the accepted half) and 22: np.int64 steps and rank, dtype=torch.float32, and what
    load_base returns, (network, card, path), as base."""
    import numpy as np

    res = _adapt(steps=np.int64(2), rank=np.int64(2), dtype=torch.float32)
    assert res.history.steps == 2 and res.method.describe()["rank"] == 2 and res.extra["settings"]["dtype"] == "float32"
    assert _adapt(base=pinn_lora.load_base("helmholtz")).history.steps == 1


def test_negative_target_index_is_the_output_layer(tmp_path):
    """Issue 14, item 21: targets=[-1] is accepted, documented (as in Python, from the end) and recorded."""
    res = _adapt(targets=[-1], rank=1, run_dir=tmp_path / "run")
    card = json.loads((tmp_path / "run" / "card.json").read_text())
    assert card["adapted_layers"] == [len(res.model.linears) - 1] and card["method"]["targets"] == [-1]


def test_helmholtz_modes_survive_the_card(tmp_path):
    """Issue 14, item 22: a Helmholtz target with other modes reloads with them (main rebuilt the default)."""
    prob = pinn_lora.get_problem("helmholtz", k=3.0, modes=[[1, 1], [2, 3]])
    res = _adapt(problem=prob, run_dir=tmp_path / "run")
    loaded = pinn_lora.load_adapter(tmp_path / "run")
    assert loaded.problem.modes == ((1, 1), (2, 3)) and loaded.problem.key() == res.problem.key()


def test_catalogue_size():
    assert len(CLI_CASES) + len(BASE_CASES) >= 30 and len(API_CASES) >= 30 and len(TAMPER_CASES) >= 20


def test_shipped_cards_and_fresh_cards_pass_the_schema(files, tmp_path):
    from pinn_lora.runs.adapter_io import read_adapter_card
    from pinn_lora.store.zoo import shipped

    for name in shipped():
        pinn_lora.load_base(name)
    assert read_adapter_card(files.adapter)["kind"] == "pinn_lora.adapter"
    shutil.copytree(files.adapter, tmp_path / "copy")
    assert pinn_lora.load_adapter(tmp_path / "copy").method.name == "lora"


def test_pretrain_cli_refuses_and_cleans_up_like_adapt(tmp_path, monkeypatch, capsys):
    from pinn_lora.cli import pretrain

    def run(*args):
        monkeypatch.setattr(sys, "argv", ["pinn_lora.pretrain", *map(str, args)])
        monkeypatch.chdir(tmp_path)
        with pytest.raises(SystemExit) as info:
            pretrain.main()
        return info.value.code, capsys.readouterr().err

    code, err = run("problem=helmholtz", "steps=2.5", f"out={tmp_path / 'p'}")
    assert_one_line(code, err, "steps=2.5 must be an integer >= 0")
    assert list(tmp_path.iterdir()) == []
    done = tmp_path / "done"
    done.mkdir()
    (done / "base.json").write_text("{}")
    code, err = run("problem=helmholtz", "steps=2", f"out={done}")
    assert_one_line(code, err, f"out={done} is not empty (base.json) and was not created by pinn_lora")
    assert [p.name for p in done.iterdir()] == ["base.json"]
    pinn_lora.store.rundir.claim(tmp_path / "mine").release()
    code, err = run("problem=helmholtz", "steps=2", f"out={tmp_path / 'mine'}")
    assert_one_line(code, err, f"out={tmp_path / 'mine'} already holds a previous run (finished; pid")
    assert err.rstrip().endswith("it is never overwritten: choose another out=..., or resume=true to continue it")
    code, err = run("problem=helmholtz", "steps=2", f"out={tmp_path / 'mine'}", "resume=true")  # nothing to resume
    assert_one_line(code, err, f"nothing to resume: no checkpoint {tmp_path / 'mine' / 'checkpoint.safetensors'}")


def test_the_commands_are_modules_and_the_functions_have_their_own_names():
    """One public name per action (issue 15, item 5): ``pinn_lora.adapt``, ``.pretrain`` and ``.compare`` are
    the ``python -m`` modules, not callable; the library functions are ``adapt_to``, ``pretrain_base`` and
    ``compare_runs``. Asked for before its module is imported, a command's name says where the function is."""
    import importlib

    for command, function, home in (("adapt", "adapt_to", "runs.adapt"), ("pretrain", "pretrain_base", "runs.pretrain"),
                                    ("compare", "compare_runs", "runs.compare")):
        module = importlib.import_module(f"pinn_lora.{command}")
        assert getattr(pinn_lora, command) is module and not callable(module)
        assert getattr(pinn_lora, function) is getattr(importlib.import_module(f"pinn_lora.{home}"), function)
        with pytest.raises(AttributeError, match=rf"the library function is pinn_lora\.{function}\)"):
            pinn_lora.__getattr__(command)
    with pytest.raises(ConfigError, match="steps=-1 must be an integer >= 0"):
        pinn_lora.adapt_to("helmholtz", pinn_lora.get_problem("helmholtz"), "lora", steps=-1)
