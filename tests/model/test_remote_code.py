"""Hub-ready folders: ``save_pretrained`` ships the model code with an ``auto_map``, so that
``AutoModel*.from_pretrained(folder, trust_remote_code=True)`` works where modernalbert is not installed."""

import json
import site
import subprocess
import sys

import torch
from safetensors.torch import save_file

from modernalbert.model.modeling import AUTO_CLASSES
from tests.conftest import padded_batch, randomize_adapters, small_config

# Runs in `python -I -S`: no PYTHONPATH, no user site, no .pth files (so no editable install of modernalbert); the
# interpreter sees the standard library plus the site-packages directories given on the command line, and a
# modernalbert installed there as a regular package is blocked too.
FRESH_INTERPRETER = r"""
import json, sys
sys.path.extend(sys.argv[2:])
sys.modules["modernalbert"] = None  # importing it raises ImportError, however it is installed
try:
    import modernalbert
except ImportError:
    pass
else:
    raise AssertionError("modernalbert must not be importable here")
import torch, transformers
from safetensors.torch import load_file

cases = json.loads(sys.argv[1])
for case in cases:
    auto = getattr(transformers, case["auto"])
    model = auto.from_pretrained(case["folder"], trust_remote_code=True).eval()
    assert type(model).__name__ == case["cls"], type(model)
    assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
    inputs = load_file(case["inputs"])
    with torch.no_grad():
        out = model(**inputs, output_router_logits=True)
    for name, expected in load_file(case["outputs"]).items():
        torch.testing.assert_close(getattr(out, name), expected, rtol=0, atol=0, msg=name)
# One folder serves every head (auto_map names them all): a saved MaskedLM starts a classifier, as ModernBERT's do.
clf = transformers.AutoModelForSequenceClassification.from_pretrained(cases[1]["folder"], trust_remote_code=True)
assert type(clf).__name__ == "ModernAlbertForSequenceClassification"
print("ok", len(cases))
"""


def _inputs(cls_name: str) -> dict[str, torch.Tensor]:
    ids, mask = padded_batch(lengths=(11, 3))  # past the test preset's window (4 each way)
    if cls_name == "ModernAlbertForMultipleChoice":
        return {"input_ids": ids[None].repeat(2, 1, 1), "attention_mask": mask[None].repeat(2, 1, 1)}
    return {"input_ids": ids, "attention_mask": mask}


def test_every_head_loads_as_remote_code_where_the_package_is_absent(tmp_path):
    cases = []
    for cls, auto in AUTO_CLASSES.items():
        folder = tmp_path / cls.__name__
        model = cls(small_config(num_labels=3)).eval()
        randomize_adapters(model)
        model.save_pretrained(folder)
        saved = json.loads((folder / "config.json").read_text())
        assert set(saved["layer_types"]) == {"full_attention", "sliding_attention"}  # mixed layer types
        assert saved["auto_map"]["AutoConfig"] == "configuration.ModernAlbertConfig"
        assert saved["auto_map"][auto] == f"modeling.{cls.__name__}" and len(saved["auto_map"]) == 7
        assert all((folder / f).is_file() for f in ("modeling.py", "configuration.py", "autocast.py"))
        inputs = _inputs(cls.__name__)
        with torch.no_grad():
            out = model(**inputs, output_router_logits=True)
        outputs = {k: v.contiguous() for k, v in out.items() if torch.is_tensor(v)}
        save_file(inputs, tmp_path / f"{cls.__name__}.inputs.safetensors")
        save_file(outputs, tmp_path / f"{cls.__name__}.outputs.safetensors")
        cases.append({"auto": auto, "cls": cls.__name__, "folder": str(folder),
                      "inputs": str(tmp_path / f"{cls.__name__}.inputs.safetensors"),
                      "outputs": str(tmp_path / f"{cls.__name__}.outputs.safetensors")})
    env = {"HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"), "OMP_NUM_THREADS": "1",
           "HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", FRESH_INTERPRETER, json.dumps(cases), *site.getsitepackages()],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith(f"ok {len(AUTO_CLASSES)}")
