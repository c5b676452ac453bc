"""transformers' own generic model tests, run against every ModernAlbert class.

``ModelTesterMixin`` and ``ConfigTester`` come from the source distribution of the installed transformers version:
fetched from the package index with ``pip download`` on first use and cached under
``~/.cache/modernalbert/transformers-tests/<version>`` (``MODERNALBERT_CACHE`` moves the root), never copied into
this repository. Without network and without a cached copy the module is skipped, saying so.

The source distribution ships ``tests/*.py`` but not the sub-packages three of those files import from; the module
supplies them, each for the one purpose it serves there:

* ``generation.test_utils.GenerationTesterMixin``: a marker class; transformers checks that the tester of a model
  that cannot generate does *not* inherit it (an encoder's does not).
* ``exporters.test_export.ExportTesterMixin``: the base of ``ModelTesterMixin`` carrying transformers' torch.export
  tests, which the distribution leaves out; so they do not run here (``tests/export`` covers our ONNX export).
* ``utils.test_configuration_utils.config_common_kwargs``: the common ``PreTrainedConfig`` fields, each set away
  from its default, for ``ConfigTester.check_config_arguments_init``.

The model is a small *recursive* MoL configuration (2 effective layers sharing one block whose FFN is a Mixture of
LoRAs) with ModernBERT's attention pattern: the block attends globally at its first recursion position and through a
sliding window at its second, the window (2 tokens each way) shorter than the tester's sequences, so every test runs
both layer types; the config's ``sliding_window`` is what transformers' tests set when they test sliding windows.
The experts' B matrices start at zero (a MoL layer equals the plain FFN at init, PEFT's convention), which would hide
the experts from every output the suite compares; here they are initialised to small random values.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import types
import unittest
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import transformers
from transformers import initialization
from transformers.models.auto import modeling_auto

from modernalbert import (
    ModernAlbertConfig,
    ModernAlbertForMaskedLM,
    ModernAlbertForMultipleChoice,
    ModernAlbertForQuestionAnswering,
    ModernAlbertForSequenceClassification,
    ModernAlbertForTokenClassification,
    ModernAlbertModel,
)
from modernalbert.model import modeling
from modernalbert.model.modeling import AUTO_CLASSES

PACKAGE = "transformers_tests"  # import name of the fetched tests/ folder (ours is `tests`)
FILES = ("test_modeling_common.py", "test_configuration_common.py")


def _cache_root() -> Path:
    root = os.environ.get("MODERNALBERT_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "modernalbert") / "transformers-tests"


def _fetch(version: str, dest: Path) -> None:
    """Download the transformers sdist of ``version`` and unpack its ``tests/*.py`` into ``dest`` (atomically)."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet",
               "--dest", tmp, f"transformers=={version}"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        archives = list(Path(tmp).glob("transformers-*.tar.gz"))
        if done.returncode != 0 or not archives:
            raise OSError(f"`{' '.join(cmd[2:])}` failed: {(done.stderr or done.stdout).strip()[-400:]}")
        staging = Path(tmp) / PACKAGE
        staging.mkdir()
        prefix = f"transformers-{version}/tests/"
        with tarfile.open(archives[0]) as tar:
            for member in tar.getmembers():
                name = member.name[len(prefix):] if member.name.startswith(prefix) else ""
                if member.isfile() and name.endswith(".py") and "/" not in name:
                    (staging / name).write_bytes(tar.extractfile(member).read())
        if not all((staging / f).is_file() for f in FILES):
            raise OSError(f"the transformers {version} source distribution has no {FILES} under tests/")
        (staging / "__init__.py").write_text("")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(dest, ignore_errors=True)  # an incomplete copy (tampered with): replaced
        with contextlib.suppress(FileExistsError, OSError):
            shutil.move(str(staging), str(dest))  # another process may have won the race: its copy is as good
    if not dest.is_dir():
        raise OSError(f"could not place the fetched tests in {dest}")


def _stand_in(name: str, **attributes: object) -> None:
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    sys.modules[name] = module


def _load_transformers_tests() -> tuple[types.ModuleType, types.ModuleType]:
    version = transformers.__version__
    base = _cache_root() / version
    folder = base / PACKAGE
    if not all((folder / f).is_file() for f in FILES):
        try:
            _fetch(version, folder)
        except (OSError, subprocess.SubprocessError) as err:
            pytest.skip(f"transformers {version}'s tests are not cached in {base} and could not be fetched "
                        f"({err}); run once with access to the package index", allow_module_level=True)
    if str(base) not in sys.path:
        sys.path.insert(0, str(base))
    _stand_in(f"{PACKAGE}.generation")
    _stand_in(f"{PACKAGE}.generation.test_utils", GenerationTesterMixin=type("GenerationTesterMixin", (), {}))
    _stand_in(f"{PACKAGE}.exporters")
    _stand_in(f"{PACKAGE}.exporters.test_export", ExportTesterMixin=type("ExportTesterMixin", (), {}))
    _stand_in(f"{PACKAGE}.utils")
    _stand_in(f"{PACKAGE}.utils.test_configuration_utils", config_common_kwargs={
        # Every common field PreTrainedConfig declares, set away from its default (plus output_attentions).
        "return_dict": False,
        "output_hidden_states": True,
        "output_attentions": True,
        "dtype": "float16",
        "chunk_size_feed_forward": 5,
        "architectures": ["ModernAlbertModel"],
        "id2label": {0: "label"},
        "label2id": {"label": "0"},
        "problem_type": "regression",
    })
    return (importlib.import_module(f"{PACKAGE}.test_modeling_common"),
            importlib.import_module(f"{PACKAGE}.test_configuration_common"))


common, config_common = _load_transformers_tests()

# Where transformers' tests look a class up by task (e.g. to build labels or to expand multiple-choice inputs):
# the name tables of its auto classes, which list models inside the transformers tree only.
TASK_TABLES = {
    "MODEL_MAPPING_NAMES": ModernAlbertModel,
    "MODEL_FOR_MASKED_LM_MAPPING_NAMES": ModernAlbertForMaskedLM,
    "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES": ModernAlbertForSequenceClassification,
    "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES": ModernAlbertForTokenClassification,
    "MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES": ModernAlbertForQuestionAnswering,
    "MODEL_FOR_MULTIPLE_CHOICE_MAPPING_NAMES": ModernAlbertForMultipleChoice,
}


@pytest.fixture(autouse=True, scope="module")
def _listed_in_transformers_task_tables():
    for table, cls in TASK_TABLES.items():
        getattr(modeling_auto, table)[ModernAlbertConfig.model_type] = cls.__name__
    yield
    for table in TASK_TABLES:
        getattr(modeling_auto, table).pop(ModernAlbertConfig.model_type, None)


@pytest.fixture(autouse=True, scope="module")
def _experts_start_non_zero():
    original = modeling.ModernAlbertPreTrainedModel._init_weights

    def init_weights(self, module):
        original(self, module)
        if isinstance(module, modeling.MoLGeGLU):
            for p in (module.lora_B1, module.lora_B2):
                initialization.normal_(p, mean=0.0, std=0.05)

    modeling.ModernAlbertPreTrainedModel._init_weights = init_weights
    yield
    modeling.ModernAlbertPreTrainedModel._init_weights = original


@dataclass
class ModernAlbertModelTester:
    """A recursive MoL model: 2 effective layers sharing one block (group_depth 2) whose FFN is a MoL; layer 0
    global, layer 1 local (ModernBERT's default pattern) with a window of 2 tokens each way."""

    parent: unittest.TestCase
    batch_size: int = 3
    seq_length: int = 7
    is_training: bool = True
    vocab_size: int = 99
    hidden_size: int = 32
    embedding_size: int = 16
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    intermediate_size: int = 37
    max_position_embeddings: int = 64
    num_labels: int = 3
    num_choices: int = 4

    def get_config(self) -> ModernAlbertConfig:
        return ModernAlbertConfig(
            vocab_size=self.vocab_size, hidden_size=self.hidden_size, embedding_size=self.embedding_size,
            num_hidden_layers=self.num_hidden_layers, group_depth=2, mol_groups=[0],
            num_attention_heads=self.num_attention_heads, intermediate_size=self.intermediate_size,
            num_experts=4, num_experts_per_tok=2, lora_rank=4, lora_alpha=8.0, local_attention=4,
            # Weights large enough that attention is not uniform: with one global layer of two, the RoPE-scaling
            # tests' outputs would otherwise differ by about their 1e-5 tolerance.
            initializer_range=0.05,
            max_position_embeddings=self.max_position_embeddings, pad_token_id=0, bos_token_id=1, eos_token_id=2,
            cls_token_id=1, sep_token_id=2, mask_token_id=3, num_labels=self.num_labels,
        )

    def prepare_config_and_inputs_for_common(self):
        input_ids = common.ids_tensor([self.batch_size, self.seq_length], self.vocab_size)
        attention_mask = common.random_attention_mask([self.batch_size, self.seq_length])
        return self.get_config(), {"input_ids": input_ids, "attention_mask": attention_mask}


class ModernAlbertModelTest(common.ModelTesterMixin, unittest.TestCase):
    all_model_classes = tuple(AUTO_CLASSES)  # every ModernAlbert class: the encoder and the five heads
    # transformers runs its weight-initialisation test only for models it has vetted (by file date); ours is meant
    # to pass it: every parameter and buffer is set by _init_weights.
    test_can_init_all_missing_weights_before_2023 = True

    def setUp(self):
        self.model_tester = ModernAlbertModelTester(self)
        self.config_tester = config_common.ConfigTester(
            self, config_class=ModernAlbertConfig, hidden_size=32, num_attention_heads=4, num_hidden_layers=2,
            group_depth=2, mol_groups=[0],
        )

    def test_config(self):
        self.config_tester.run_common_tests()

    def test_sliding_window_mask(self):
        """transformers' version tests a causal decoder's window (``use_sliding_window`` and a band that ends at the
        query, which ``ModernBertConfig`` lacks too, so it skips there); here its bidirectional counterpart, for every
        class: setting ``config.sliding_window`` sets the band of the local layers, whose eager probabilities vanish
        exactly outside ``|i - j| <= sliding_window`` and nowhere inside, while the global layers attend everywhere."""
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        seq_len = self.model_tester.seq_length
        inputs["attention_mask"] = torch.ones(self.model_tester.batch_size, seq_len, dtype=torch.long)
        i = torch.arange(seq_len)
        for window in (1, 3):
            config.sliding_window = window
            band = (i[:, None] - i[None, :]).abs() <= window  # (L, L)
            for model_class in self.all_model_classes:
                model = model_class._from_config(config, attn_implementation="eager").eval()
                batch = self._prepare_for_class(inputs, model_class)
                with torch.no_grad():
                    attentions = model(**batch, output_attentions=True).attentions
                types = model.config.layer_types
                assert types == ["full_attention", "sliding_attention"] and model.config.local_attention == 2 * window
                for probs, layer_type in zip(attentions, types, strict=True):  # (B, h, L, L)
                    if layer_type == "sliding_attention":
                        assert (probs[..., ~band] == 0).all() and (probs[..., band] > 0).all(), model_class
                    else:
                        assert (probs > 0).all(), model_class
