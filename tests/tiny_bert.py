"""A tiny random BERT in the Hugging Face folder layout, written by the tests themselves (nothing downloaded).

`build_tiny_bert(folder)` writes config.json, model.safetensors, tokenizer.json (WordPiece trained here on
SENTENCES), vocab.txt, tokenizer_config.json and special_tokens_map.json: a folder `textclf base-models add`
installs and transformers' `AutoModel` / `AutoTokenizer.from_pretrained` load. With transformers and torch
installed the weights come from `BertModel(config).save_pretrained`; without them, from numpy in the same
layout (tensor names, shapes and initialisation of BertModel), so the API tests need neither. The fixture
`tiny_bert_dir` (tests/conftest.py) gives each test its own copy.
"""

from __future__ import annotations

import io
import json
import struct
import warnings
import zipfile
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders
from tokenizers.models import WordPiece
from tokenizers.normalizers import BertNormalizer
from tokenizers.pre_tokenizers import BertPreTokenizer
from tokenizers.processors import TemplateProcessing
from tokenizers.trainers import WordPieceTrainer

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # ids 0..4, in this order
HIDDEN_SIZE = 32
NUM_LAYERS = 2
NUM_HEADS = 2
INTERMEDIATE_SIZE = 64
MAX_POSITIONS = 64

# The tiny dataset's topics (tests/helpers.py tiny_dataset_csv: sports, cooking) and some questions, so the
# vocabulary covers what the training tests feed it.
SENTENCES = [
    "the team won the match", "a great goal in the final minute", "the striker scored twice",
    "fans cheered the winning team", "the coach praised the defence", "a penalty decided the game",
    "the keeper saved a late shot", "the league title race is close", "they lost the derby at home",
    "the referee showed a red card", "the midfielder ran the game", "an away win for the champions",
    "bake the bread for forty minutes", "stir the sauce over low heat", "chop the onions finely",
    "season the soup with salt", "whisk the eggs and sugar", "roast the chicken with garlic",
    "simmer the beans until soft", "knead the dough on a floured table", "fry the garlic in olive oil",
    "serve the pasta with fresh basil", "grate the cheese over the dish", "let the cake cool on a rack",
    "How far is it from Denver to Boston ?", "How many people live in Paris ?", "Where is Rome ?",
    "What country is Oslo in ?", "Who is the mayor of Lima ?", "Who founded Aspen ?",
    "Who wrote Hamlet ?", "When did the war end ?", "What is the capital of Peru ?",
    "the weather is cold and wet today", "it will rain in the north tomorrow", "a sunny weekend is expected",
    "the train left the station late", "she reads a book every week", "we walked along the river at dawn",
    "the market opens early on Saturday", "prices rose again this month", "the bank cut interest rates",
    "a new phone was released yesterday", "the software update fixed the bug", "he plays the piano well",
    "the museum shows old paintings", "children played in the park", "the doctor said to rest",
    "the flight to London was cancelled", "our cat sleeps all day long",
]


def train_tokenizer(sentences: list[str] = SENTENCES, vocab_size: int = 200) -> Tokenizer:
    """A BERT-style uncased WordPiece tokenizer ([PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4) trained on `sentences`."""
    tokenizer = Tokenizer(WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = BertPreTokenizer()
    tokenizer.train_from_iterator(sentences, WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                                              show_progress=False))
    assert [tokenizer.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    tokenizer.post_processor = TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                  special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tokenizer.decoder = decoders.WordPiece()
    return tokenizer


def bert_config(vocab_size: int) -> dict:
    """config.json of the tiny BERT, as transformers' BertConfig writes it."""
    return {"architectures": ["BertModel"], "model_type": "bert", "vocab_size": vocab_size,
            "hidden_size": HIDDEN_SIZE, "num_hidden_layers": NUM_LAYERS, "num_attention_heads": NUM_HEADS,
            "intermediate_size": INTERMEDIATE_SIZE, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
            "attention_probs_dropout_prob": 0.1, "max_position_embeddings": MAX_POSITIONS, "type_vocab_size": 2,
            "initializer_range": 0.02, "layer_norm_eps": 1e-12, "pad_token_id": 0,
            "position_embedding_type": "absolute", "torch_dtype": "float32"}


def bert_tensors(vocab_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """BertModel's state dict in numpy: its names and shapes, initialised as BertModel does (normal(0, 0.02)
    weights, zero biases, unit LayerNorm, a zero [PAD] embedding)."""
    rng = np.random.default_rng(seed)
    h, i = HIDDEN_SIZE, INTERMEDIATE_SIZE

    def normal(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    def layer_norm(prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}.weight": np.ones(h, np.float32), f"{prefix}.bias": np.zeros(h, np.float32)}

    def dense(prefix: str, out: int, inp: int) -> dict[str, np.ndarray]:
        return {f"{prefix}.weight": normal(out, inp), f"{prefix}.bias": np.zeros(out, np.float32)}

    words = normal(vocab_size, h)
    words[0] = 0.0  # padding_idx
    tensors = {"embeddings.word_embeddings.weight": words,
               "embeddings.position_embeddings.weight": normal(MAX_POSITIONS, h),
               "embeddings.token_type_embeddings.weight": normal(2, h), **layer_norm("embeddings.LayerNorm")}
    for n in range(NUM_LAYERS):
        p = f"encoder.layer.{n}"
        for part in ("query", "key", "value"):
            tensors |= dense(f"{p}.attention.self.{part}", h, h)
        tensors |= dense(f"{p}.attention.output.dense", h, h) | layer_norm(f"{p}.attention.output.LayerNorm")
        tensors |= dense(f"{p}.intermediate.dense", i, h)
        tensors |= dense(f"{p}.output.dense", h, i) | layer_norm(f"{p}.output.LayerNorm")
    return tensors | dense("pooler.dense", h, h)


def write_safetensors(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    """A safetensors file (the `safetensors` package's numpy writer when installed, else the format by hand:
    8-byte little-endian header length, JSON header padded to 8 bytes, then the tensors' bytes in order)."""
    metadata = {"format": "pt", **(metadata or {})}  # transformers refuses a file without format metadata
    try:
        from safetensors.numpy import save_file
    except ImportError:
        pass
    else:
        save_file(tensors, str(path), metadata=metadata)
        return
    dtypes = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(np.int64): "I64",
              np.dtype(np.int32): "I32"}
    header: dict[str, object] = {"__metadata__": metadata}
    offset, blobs = 0, []
    for name, array in sorted(tensors.items()):
        blob = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": dtypes[array.dtype], "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for blob in blobs:
            f.write(blob)


def build_tiny_bert(folder: Path, *, seed: int = 0, use_transformers: bool | None = None) -> Path:
    """Write the tiny BERT into `folder` (created) and return it. `use_transformers` None: when it is importable."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer()
    vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    vocab = sorted(tokenizer.get_vocab(with_added_tokens=True).items(), key=lambda item: item[1])
    (folder / "vocab.txt").write_text("".join(f"{token}\n" for token, _ in vocab), encoding="utf-8")
    specials = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
                "mask_token": "[MASK]"}
    (folder / "special_tokens_map.json").write_text(json.dumps(specials, indent=2))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "BertTokenizerFast", "do_lower_case": True, "model_max_length": MAX_POSITIONS,
         **specials}, indent=2))
    if use_transformers is None:
        try:
            import transformers  # noqa: F401
        except ImportError:
            use_transformers = False
        else:
            use_transformers = True
    if use_transformers:
        import torch
        from transformers import BertConfig, BertModel

        config = {k: v for k, v in bert_config(vocab_size).items() if k not in ("architectures", "model_type")}
        torch.manual_seed(seed)
        with warnings.catch_warnings():  # the library's own deprecation notices are not this test's business
            warnings.simplefilter("ignore")
            BertModel(BertConfig(**config)).save_pretrained(folder, safe_serialization=True)
    else:
        (folder / "config.json").write_text(json.dumps(bert_config(vocab_size), indent=2))
        write_safetensors(folder / "model.safetensors", bert_tensors(vocab_size, seed))
    return folder


def zip_of(entries: dict[str, bytes]) -> bytes:
    """A zip (stored, not compressed) holding `entries`, names as given: for uploads a folder cannot make."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return out.getvalue()


def zip_folder(folder: Path, *, top: str | None = None) -> bytes:
    """The folder's files as a zip: at the zip's root, or inside one top-level folder `top`."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
            name = path.relative_to(folder).as_posix()
            archive.write(path, f"{top}/{name}" if top else name)
    return out.getvalue()
