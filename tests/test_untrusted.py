"""Untrusted files (issue 7, part 4): weights are read only as safetensors, nothing is unpickled, a
pickle payload in place of a weights file is refused without running it, cards are plain data checked
against a schema (pinn_lora.store.schema), and every YAML config parses with yaml.safe_load and has the keys
the code reads."""
from __future__ import annotations

import builtins
import hashlib
import importlib
import inspect
import io
import json
import pickle
import re
import shutil
import sys
import tokenize
from pathlib import Path

import pytest
import torch
import yaml

import pinn_lora
from pinn_lora.store.tensors import CheckpointError
from pinn_lora.cli.common import config_dir, group_options
from pinn_lora.core.registry import METHODS, PROBLEMS
from pinn_lora.store.schema import SchemaError, base_card_schema, describe, validate, validate_config_file
from pinn_lora.store.zoo import ZOO_DIR

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_SOURCES = sorted([*(ROOT / "pinn_lora").rglob("*.py"), *(ROOT / "problems").rglob("*.py")])


# ---- the source: no unpickling anywhere ------------------------------------------------------------------
def code_only(path: Path) -> str:
    """The file's Python code with comments and string literals (docstrings included) blanked out."""
    out = []
    tokens = tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
    for tok in tokens:
        if tok.type in (tokenize.COMMENT, tokenize.STRING):
            out.append('""' if tok.type == tokenize.STRING else "")
        elif sys.version_info >= (3, 12) and tok.type in (tokenize.FSTRING_START, tokenize.FSTRING_MIDDLE,
                                                          tokenize.FSTRING_END):
            out.append('""' if tok.type == tokenize.FSTRING_START else "")
        else:
            out.append(tok.string if tok.type != tokenize.NEWLINE else "\n")
        out.append(" ")
    return "".join(out)


def _call_text(code: str, start: int) -> str:
    """The text of the call whose opening parenthesis is at or after ``start``."""
    i = code.index("(", start)
    depth = 0
    for j in range(i, len(code)):
        depth += {"(": 1, ")": -1}.get(code[j], 0)
        if depth == 0:
            return code[i:j + 1]
    return code[i:]


FORBIDDEN = [
    (r"\bimport\s+(c?pickle|dill|cloudpickle|shelve|marshal)\b", "imports a pickle-like module"),
    (r"\bfrom\s+(c?pickle|dill|cloudpickle|shelve|marshal)\s+import\b", "imports from a pickle-like module"),
    (r"\bpickle\s*\.\s*(loads?|Unpickler)\b", "unpickles"),
    (r"\ballow_pickle\s*=\s*True\b", "np.load(..., allow_pickle=True)"),
    (r"\byaml\s*\.\s*(unsafe_load|full_load|load_all|unsafe_load_all)\s*\(", "an unsafe YAML loader"),
    (r"\bLoader\s*=\s*(yaml\s*\.\s*)?(Unsafe|Full)?Loader\b", "an unsafe YAML loader"),
    (r"\btorch\s*\.\s*jit\s*\.\s*load\s*\(", "torch.jit.load runs TorchScript from a file"),
]


def test_sources_are_scanned(tmp_path):
    assert len(PACKAGE_SOURCES) > 20 and ROOT / "pinn_lora" / "store" / "tensors.py" in PACKAGE_SOURCES
    assert "pickle" not in code_only(ROOT / "pinn_lora" / "store" / "tensors.py")  # its docstring says "unpickles"
    probe = tmp_path / "probe.py"  # the scanner catches these
    probe.write_text('"""pickle in a docstring"""\nx = torch.load(path)  # pickle\nimport pickle\n'
                     "y = pickle.loads(b)\nz = np.load(f, allow_pickle=True)\n")
    code = code_only(probe)
    assert code.count("pickle") == 3
    for index in (0, 2, 3):
        assert re.search(FORBIDDEN[index][0], code)
    assert "weights_only" not in _call_text(code, code.index("torch"))


@pytest.mark.parametrize("path", PACKAGE_SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_source_never_unpickles(path):
    code = code_only(path)
    for pattern, what in FORBIDDEN:
        match = re.search(pattern, code)
        assert match is None, f"{path.relative_to(ROOT)} {what}: {match.group(0)!r}"
    for match in re.finditer(r"\btorch\s*\.\s*load\s*\(", code):  # torch.load only with weights_only=True
        call = _call_text(code, match.start())
        assert re.search(r"\bweights_only\s*=\s*True\b", call), f"{path.relative_to(ROOT)}: torch.load{call}"
    for match in re.finditer(r"\b(np|numpy)\s*\.\s*load\s*\(", code):
        call = _call_text(code, match.start())
        assert "allow_pickle" not in call or re.search(r"allow_pickle\s*=\s*False", call), path


# ---- crafted files: a pickle whose unpickling would create a marker file ----------------------------------
class Payload:
    """Unpickling this creates ``marker`` (``open(marker, "w")``): a stand-in for arbitrary code."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.open, (self.marker, "w"))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def payloads(tmp_path):
    """(pickle bytes, torch.save bytes, marker path); checks the payload is live when unpickled."""
    marker = tmp_path / "MARKER_code_ran"
    raw = pickle.dumps({"linears.0.weight": Payload(marker)})
    buf = io.BytesIO()
    torch.save({"linears.0.weight": Payload(marker), "t": torch.zeros(2)}, buf)
    live = tmp_path / "live_check"
    pickle.loads(pickle.dumps(Payload(live))).close()  # the same payload, unpickled on purpose: it runs
    assert live.is_file()
    live.unlink()
    return raw, buf.getvalue(), marker


def _base_with_weights(tmp_path: Path, name: str, data: bytes) -> Path:
    """A saved base whose weights file is ``data``, next to a valid card whose sha256 matches it (so the
    refusal can only come from the file format)."""
    card = json.loads((ZOO_DIR / "helmholtz.json").read_text())
    stem = tmp_path / name
    Path(f"{stem}.safetensors").write_bytes(data)
    Path(f"{stem}.json").write_text(json.dumps({**card, "weights_sha256": sha(data)}))
    return stem


def test_pickled_base_weights_are_refused_unrun(payloads, tmp_path):
    raw, torch_saved, marker = payloads
    for name, data in (("pickled", raw), ("torch_saved", torch_saved)):
        stem = _base_with_weights(tmp_path, name, data)
        with pytest.raises(CheckpointError, match=rf"cannot read {re.escape(str(stem))}.safetensors as safetensors "
                                                  r".*only safetensors files are accepted") as info:
            pinn_lora.load_base(stem)
        assert "\n" not in str(info.value)
        assert not marker.exists(), f"{name}: unpickled!"
        with pytest.raises(CheckpointError, match="only safetensors files are accepted"):
            pinn_lora.adapt_to(stem, pinn_lora.get_problem("helmholtz", k=3.0), "lora", steps=1, device="cpu",
                               progress=False, plots=False)
        assert not marker.exists()


def test_pickled_base_through_the_cli_is_one_line(payloads, tmp_path, monkeypatch, capsys):
    raw, _, marker = payloads
    stem = _base_with_weights(tmp_path, "pickled", raw)
    cli_module = importlib.import_module("pinn_lora.cli.adapt")
    monkeypatch.setattr(sys, "argv", ["pinn_lora.adapt", "problem=helmholtz", "method=lora", "steps=1",
                                      f"base={stem}", f"out={tmp_path / 'run'}", "progress=false"])
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        cli_module.main()
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1 and err.startswith("error: cannot read ")
    assert "only safetensors files are accepted" in err and "Traceback" not in err
    assert not marker.exists() and not (tmp_path / "run").exists()


def test_pickled_adapter_is_refused_unrun(payloads, tmp_path):
    raw, torch_saved, marker = payloads
    net, card, _ = pinn_lora.load_base("helmholtz")
    method = pinn_lora.get_method("lora")
    problem = pinn_lora.get_problem("helmholtz", k=3.0)
    pinn_lora.save_adapter(pinn_lora.attach(net, method, problem, base_card=card), tmp_path / "good", method, problem)
    for name, data in (("pickled", raw), ("torch_saved", torch_saved)):
        d = tmp_path / name
        shutil.copytree(tmp_path / "good", d)
        (d / "adapter.safetensors").write_bytes(data)
        acard = json.loads((d / "card.json").read_text())
        (d / "card.json").write_text(json.dumps({**acard, "weights_sha256": sha(data)}))
        for base in (None, "helmholtz"):
            with pytest.raises(CheckpointError, match=r"adapter.safetensors as safetensors .*only safetensors files"):
                pinn_lora.load_adapter(d, base=base)
        assert not marker.exists(), f"{name}: unpickled!"


def test_cards_are_data_and_never_instantiate(tmp_path):
    """Hydra-style ``_target_`` entries in a card are inert data; where a value must be a scalar (a
    method option) an object is refused by the schema."""
    marker = tmp_path / "MARKER"
    net, card, _ = pinn_lora.load_base("helmholtz")
    saved = pinn_lora.save_base(net, {**card, "recipe": {"_target_": "builtins.open", "file": str(marker),
                                                         "mode": "w"}}, tmp_path / "b")
    assert pinn_lora.load_base(tmp_path / "b")[1]["recipe"]["_target_"] == "builtins.open"
    assert not marker.exists() and saved["recipe"]["_target_"] == "builtins.open"
    method = pinn_lora.get_method("lora")
    problem = pinn_lora.get_problem("helmholtz", k=3.0)
    pinn_lora.save_adapter(pinn_lora.attach(pinn_lora.load_base("helmholtz")[0], method, problem, base_card=card),
                           tmp_path / "a", method, problem)
    acard = json.loads((tmp_path / "a" / "card.json").read_text())
    acard["method"]["rank"] = {"_target_": "builtins.open", "file": str(marker), "mode": "w"}
    (tmp_path / "a" / "card.json").write_text(json.dumps(acard))
    with pytest.raises(SchemaError, match=r"card .*card.json: key 'method.rank' is \{'_target_'.*; expected a number"):
        pinn_lora.load_adapter(tmp_path / "a")
    assert not marker.exists()


# ---- the schema validator --------------------------------------------------------------------------------
def test_schema_messages_name_file_key_and_expectation():
    card = json.loads((ZOO_DIR / "burgers.json").read_text())
    assert validate(card, base_card_schema(), "card x.json") is card
    cases = [
        ({**card, "network": {"layers": [2, 0, 1], "activation": "tanh"}},
         "card x.json: key 'network.layers[1]' is 0; expected an integer >= 1"),
        ({**card, "network": {"layers": [2], "activation": "tanh"}},
         "card x.json: key 'network.layers' is [2]; expected a list of at least 2 integers >= 1 (the layer widths)"),
        ({**card, "coefficients": {"nu": "0.01"}},
         "card x.json: key 'coefficients.nu' is '0.01'; expected a finite number"),
        ({**card, "coefficients": {"nu": float("inf")}}, "key 'coefficients.nu' is inf; expected a finite number"),
        ({**card, "steps": -5}, "card x.json: key 'steps' is -5; expected an integer >= 0"),
        ({**card, "steps": True}, "key 'steps' is True; expected an integer >= 0"),
        ({**card, "problem": ""}, "key 'problem' is ''; expected a non-empty string"),
        ({**card, "weights_sha256": card["weights_sha256"].upper()}, "expected a sha256 digest (64 lowercase"),
        ({k: v for k, v in card.items() if k not in ("problem", "network")}, "card x.json lacks problem, network"),
        ([card], "card x.json: key '(top level)' is [{"),
        ({**card, "network": {"layers": [2, 1], "activation": "relu6"}},
         "key 'network.activation' is 'relu6'; expected one of"),
    ]
    for bad, message in cases:
        with pytest.raises(SchemaError) as info:
            validate(bad, base_card_schema(), "card x.json")
        assert message in str(info.value), (message, str(info.value))
        assert isinstance(info.value, CheckpointError) and "\n" not in str(info.value)
    two = {**card, "steps": -1, "seed": -1}
    with pytest.raises(SchemaError, match=r"key 'steps' is -1; expected an integer >= 0 \(and 1 more problem\)"):
        validate(two, base_card_schema(), "card x.json")
    assert describe({"type": ("number", "null"), "exclusive_minimum": 0}) == "a finite number > 0 or null"


# ---- configs: YAML parsed safely, with the keys the code reads -------------------------------------------
CONFIGS = sorted(Path(config_dir()).rglob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(config_dir())))
def test_config_parses_safely_and_matches_its_schema(path):
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict)
    assert validate_config_file(path) == data


def _keys_read(fn, var: str) -> set[str]:
    """Keys a function reads from the mapping ``var``: ``var["k"]`` and ``var.get("k"...)``."""
    src = inspect.getsource(fn)
    return set(re.findall(rf"\b{var}\[\s*\"(\w+)\"\s*\]", src)) | set(re.findall(rf"\b{var}\.get\(\s*\"(\w+)\"", src))


def test_configs_have_the_keys_the_code_reads():
    from dataclasses import fields

    from pinn_lora.cli import family, pretrain
    from pinn_lora.runs import adapt as session
    from pinn_lora.runs import from_config

    from pinn_lora.runs.settings import LIBRARY, AdaptConfig

    root = Path(config_dir())
    fam = yaml.safe_load((root / "family.yaml").read_text())
    read = _keys_read(family.run_config, "cfg")
    assert {"low", "high", "anchors", "over"} <= read <= set(fam) | {"problem", "method"}, read - set(fam)
    adapt = yaml.safe_load((root / "adapt.yaml").read_text())
    assert adapt["defaults"][0] == "adapt_schema"  # its top-level keys are AdaptConfig's (pinn_lora.runs.settings)
    read = _keys_read(from_config.run_config, "cfg") | set(LIBRARY)  # run_config passes LIBRARY's keys by name
    assert read and {"steps", "seed", "device", "dtype"} <= read
    schema = {f.name for f in fields(AdaptConfig)}
    assert read <= schema, read - schema
    pre = yaml.safe_load((root / "pretrain.yaml").read_text())
    read = _keys_read(pretrain.run_config, "cfg")
    assert read <= set(pre) | {"problem"}, read - set(pre)
    needed = {k for k in _keys_read(pretrain.run_config, "recipe") if f'recipe["{k}"]' in
              inspect.getsource(pretrain.run_config)}
    assert {"layers", "activation", "lr", "n_points", "resample_every", "steps"} <= needed
    from pinn_lora.runs.pretrain import pretraining_recipe

    assert needed <= set(pretraining_recipe("burgers", {})), needed  # the recipe gives every key it reads
    for name in group_options("problem"):
        pcfg = yaml.safe_load((root / "problem" / f"{name}.yaml").read_text())
        cls = PROBLEMS.get(name)
        coefficients = {c.name for c in cls.coefficient_specs}
        assert pcfg["name"] == name
        assert coefficients <= set(pcfg), (name, coefficients - set(pcfg))  # problem.<c>=... can be given
        assert set(pcfg) - coefficients <= {"name", "modes"}, name  # the recipe is the class's, not the YAML's
        validate_config_file(root / "problem" / f"{name}.yaml", root)
    assert group_options("problem") == PROBLEMS.names()


def test_a_broken_config_file_is_named(tmp_path):
    root = tmp_path / "configs"
    (root / "problem").mkdir(parents=True)
    bad = root / "problem" / "x.yaml"
    bad.write_text("name: x\nnu: abc\n")
    with pytest.raises(SchemaError, match=r"config .*x.yaml: key 'nu' is 'abc'; expected a finite number or null"):
        validate_config_file(bad, root)
    bad.write_text("name: x\nadapt: {steps: 3}\n")  # a recipe belongs to the family class: refused, not ignored
    with pytest.raises(SchemaError, match=r"config .*x.yaml: key 'adapt' is not an allowed key"):
        validate_config_file(bad, root)
    bad.write_text("name: [unclosed\n")
    with pytest.raises(SchemaError, match=r"config .*x.yaml is not valid YAML"):
        validate_config_file(bad, root)
    bad.write_text("!!python/object/apply:os.system ['true']\n")  # safe_load refuses Python tags
    with pytest.raises(SchemaError, match="is not valid YAML"):
        validate_config_file(bad, root)
