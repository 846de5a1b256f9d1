"""The CLIP text encoder: prompt lists, ensembles, learned token embeddings, deep prompts.

Mixed into :class:`~zsad_bench.backbones.clip.CLIPBackbone`. Sequences are cut after the
longest EOT of a batch before the transformer: under the causal mask no position attends
to a later one, so the EOT features are unchanged (exact up to float summation order)
while the work shrinks from 77 to ~15 tokens for typical prompts.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F

from zsad_bench.backbones.base import escape
from zsad_bench.backbones.clip_types import CLIPModel
from zsad_bench.backbones.prompts import PromptHook

if TYPE_CHECKING:
    import contextlib

    from torch import nn

__all__ = ["CLIPTextMixin"]


class CLIPTextMixin:
    """Text-side methods of the CLIP backbone (needs ``model``, ``cfg``, ``device``, ``running``)."""

    model: nn.Module
    device: torch.device
    cfg: Any
    _tokenizer: Any = None

    if TYPE_CHECKING:  # provided by Backbone (declared here only for the type checker, not to shadow it)

        @contextlib.contextmanager
        def running(self, grad: bool = False) -> Iterator[None]:
            """See :meth:`~zsad_bench.backbones.base.Backbone.running`."""
            ...

    @property
    def clip_model(self) -> CLIPModel:
        """``model`` typed as the open_clip ``CLIP`` it is (no run-time check)."""
        return cast(CLIPModel, self.model)

    @property
    def context_length(self) -> int:
        """Token positions of the text encoder (77)."""
        return int(self.clip_model.positional_embedding.shape[0])

    @property
    def text_width(self) -> int:
        """Token width of the text encoder."""
        return int(self.clip_model.positional_embedding.shape[1])

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """(K, context_length) token ids of ``texts`` (SOT … EOT, zero padded), on the device."""
        if self._tokenizer is None:
            import open_clip

            from zsad_bench.backbones.clip import ensure_open_clip_configs

            ensure_open_clip_configs()
            self._tokenizer = open_clip.get_tokenizer(self.cfg.arch)
        return self._tokenizer(list(texts)).to(self.device)

    def eot_index(self, tokens: torch.Tensor) -> torch.Tensor:
        """(K,) position of the pooled (EOT) token of each tokenized sentence."""
        pool = getattr(self.model, "text_pool_type", "argmax")
        if pool == "argmax":
            return tokens.argmax(dim=-1)
        if pool == "eos":
            return (tokens == self.clip_model.text_eos_id).int().argmax(dim=-1)
        raise ValueError(f"text pooling {pool!r} of {self.cfg.arch} is not supported (argmax or eos)")

    def token_embeddings(self, tokens: torch.Tensor) -> torch.Tensor:
        """(K, L, D) frozen word embeddings of token ids (rows to replace by learned vectors)."""
        with torch.no_grad():
            return self.clip_model.token_embedding(tokens.to(self.device)).float()

    def encode_text(
        self,
        texts: Sequence[str] | torch.Tensor,
        *,
        prompts: PromptHook | None = None,
        normalize: bool = False,
        truncate: bool = True,
        batch_size: int = 256,
    ) -> torch.Tensor:
        """(K, E) text embeddings; equals open_clip's ``encode_text`` without prompts.

        Args:
            texts: sentences or (K, L) token ids.
            prompts: deep-prompt hook called before each text block (gradients then flow).
            normalize: L2-normalise the embeddings.
            truncate: cut sequences after the longest EOT (exact under the causal mask).
            batch_size: sentences per forward.
        """
        tokens = texts if isinstance(texts, torch.Tensor) else self.tokenize(texts)
        tokens = tokens.to(self.device)
        out = []
        for chunk in tokens.split(batch_size):
            emb = self.clip_model.token_embedding(chunk)  # (k, L, D)
            out.append(self.encode_token_embeddings(emb, self.eot_index(chunk), prompts=prompts, truncate=truncate))
        x = torch.cat(out)
        return F.normalize(x, dim=-1) if normalize else x

    def encode_token_embeddings(
        self,
        embeddings: torch.Tensor,
        eot: torch.Tensor,
        *,
        prompts: PromptHook | None = None,
        normalize: bool = False,
        truncate: bool = True,
    ) -> torch.Tensor:
        """(K, E) embeddings of sentences given as word embeddings (learned context vectors).

        Positional embedding added, causal text transformer (``prompts`` hook before each
        block), ``ln_final``, the token at ``eot`` pooled, ``@ text_projection``.

        Args:
            embeddings: (K, L, D) token embeddings, e.g. from
                :func:`~zsad_bench.backbones.prompts.replace_token_embeddings`.
            eot: (K,) pooled positions (:meth:`eot_index` of the placeholder tokens).
            prompts: deep-prompt hook.
            normalize: L2-normalise.
            truncate: cut after the longest EOT.
        """
        m = self.clip_model
        eot = eot.to(self.device)
        length = int(eot.max()) + 1 if truncate else embeddings.shape[1]
        grad = prompts is not None or embeddings.requires_grad
        with self.running(grad=grad):
            x = embeddings.to(self.device)[:, :length] + m.positional_embedding[:length].to(embeddings.dtype)
            mask = m.attn_mask[:length, :length] if m.attn_mask is not None else None
            for i, block in enumerate(m.transformer.resblocks, start=1):
                if prompts is not None:
                    x = prompts(i, x)
                x = block(x, attn_mask=mask)
            x = m.ln_final(x)
            x = x[torch.arange(x.shape[0], device=x.device), eot]  # (K, D)
            proj = m.text_projection
            x = proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj.to(x.dtype)
        x = escape(x)
        return F.normalize(x, dim=-1) if normalize else x

    def encode_prompt_ensemble(
        self, groups: Sequence[str] | Sequence[Sequence[str]], *, normalize_each: bool = True
    ) -> torch.Tensor:
        """Ensemble text embeddings: mean of the sentence embeddings, L2-normalised.

        Args:
            groups: a list of sentences (→ (E,)) or a list of lists (→ (G, E), one row per list,
                e.g. [normal sentences, anomalous sentences]).
            normalize_each: L2-normalise every sentence before averaging (APRIL-GAN, AdaCLIP);
                False averages the raw embeddings (WinCLIP/anomalib, AnoCLIP, AdaptCLIP static text).
        """
        flat = bool(groups) and isinstance(groups[0], str)
        # flat: ``groups`` is one list of sentences (a str is a Sequence[str] too, so mypy cannot tell)
        lists: list[list[str]] = [list(cast("Sequence[str]", groups))] if flat else [list(g) for g in groups]
        if any(not g for g in lists):
            raise ValueError("encode_prompt_ensemble got an empty list of sentences")
        sizes = [len(g) for g in lists]
        emb = self.encode_text([s for g in lists for s in g], normalize=normalize_each)  # (ΣK, E)
        means = torch.stack([chunk.mean(dim=0) for chunk in emb.split(sizes)])  # (G, E)
        means = F.normalize(means, dim=-1)
        return means[0] if flat else means
