"""Label scoring through a server that serves the teacher (``teach.endpoint.model``).

The same quantity as `potstill.synth.label.score_labels`: per text and label, the
log-likelihood of the label's full token sequence after the prompt and the text. Each
``prefix + text + label`` sequence is sent as token ids with ``echo`` and ``logprobs``
(`PromptLogprobs.own_logprobs`), and the log-probabilities of its last ``len(label)``
tokens are summed. No key/value cache is shared across the labels, so a text costs a
server as many prompts as there are labels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from potstill.synth.calibration import softmax
from potstill.synth.label import LabelScores
from potstill.synth.prompt import LabelPrompt
from potstill.teachers.prompt_logprobs import PromptLogprobs
from potstill.util.errors import PotstillError

CONTENT_FREE = ("N/A", "", "[MASK]")  # as `potstill.synth.label.calibrate`


class ServedLabelScorer:
    """`score` and `prior` as the local scorer gives them, from ``scorer``'s server;
    ``batch_size`` sequences go in one request, ``concurrency`` requests at a time."""

    def __init__(self, scorer: PromptLogprobs) -> None:
        self.scorer = scorer

    def score(
        self,
        prompt: LabelPrompt,
        texts: Sequence[str],
        *,
        batch_size: int = 8,
        max_length: int | None = None,
    ) -> LabelScores:
        """``(N, L)`` log-likelihoods of every label for every text (texts cut to fit
        ``max_length`` tokens with the longest label, as the local scorer cuts them)."""
        for i, text in enumerate(texts):
            if not text.strip():
                raise PotstillError(f"text {i} is empty; drop empty rows from the data to label")
        fitted = [prompt.fit(text, max_length) for text in texts]
        logprobs = self._score_rows(prompt, [ids for ids, _ in fitted], batch_size)
        return LabelScores(logprobs, prompt.label_names, sum(cut for _, cut in fitted))

    def prior(self, prompt: LabelPrompt, *, batch_size: int = 8) -> np.ndarray:
        """The label prior on content-free inputs, ``(L,)`` summing to 1 (contextual
        calibration, Zhao et al. 2021)."""
        rows = [prompt.text_ids(text) for text in CONTENT_FREE]
        prior = softmax(self._score_rows(prompt, rows, batch_size)).mean(axis=0)
        return prior / prior.sum()

    def _score_rows(
        self, prompt: LabelPrompt, rows: list[list[int]], batch_size: int
    ) -> np.ndarray:
        """``(len(rows), L)``: each label's summed log-probability after each text row."""
        pairs = [(i, j) for i in range(len(rows)) for j in range(len(prompt.label_ids))]
        sequences = [prompt.prefix_ids + rows[i] + prompt.label_ids[j] for i, j in pairs]
        per = max(1, batch_size)
        batches = [sequences[s : s + per] for s in range(0, len(sequences), per)]
        names = [
            [f"text {pairs[s + k][0]}" for k in range(len(b))]
            for s, b in zip(range(0, len(sequences), per), batches, strict=True)
        ]
        scores = np.zeros((len(rows), len(prompt.label_ids)))

        def keep(index: int, answers: list[np.ndarray]) -> None:
            for k, own in enumerate(answers):
                i, j = pairs[index * per + k]
                scores[i, j] = own[-len(prompt.label_ids[j]) :].sum()

        self.scorer.map(
            lambda item, stop: self.scorer.own_logprobs(item[0], names=item[1], stop=stop),
            list(zip(batches, names, strict=True)),
            keep,
        )
        return scores
