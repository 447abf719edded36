"""Token counts of text pieces, measured with the model's tokenizer and cached: a 128k-token
haystack is built from a few dozen distinct sentences, each encoded once."""

from tome.eval.items import TextEncoder


class TokenCounter:
    def __init__(self, encoder: TextEncoder) -> None:
        self.encoder = encoder
        # Some tokenizers add BOS (and EOS) to every encode; those are not the text's tokens.
        self._overhead = len(encoder.encode(""))
        self._pieces: dict[str, int] = {}

    def count(self, text: str) -> int:
        """Exact number of tokens of `text`."""
        return len(self.encoder.encode(text)) - self._overhead

    def piece(self, text: str) -> int:
        """Tokens of a piece that is used many times (a sentence, a word); cached. Pieces
        start with their separator, so their counts add up to the joined text's count."""
        if text not in self._pieces:
            self._pieces[text] = self.count(text)
        return self._pieces[text]
