"""dinov3.txt: the vision head and text tower aligned with a DINOv3 backbone (Meta's ``DINOTxt``, inference).

The embedding of an image is ``[CLS ; mean patch]`` of the vision-head outputs, size 2D; the text embedding
has the same size, its first half aligned with the CLS token and its second half with the mean patch token.
"""
import math
from typing import Dict, List, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .dinov3 import Attention, Block, DINOv3ViT, Mlp, dinov3_vitl16
from .weights import fit_dtypes, on_meta


class SwiGLUFFN(nn.Module):
    """w3(silu(w1 x) * w2 x) on [..., dim]; hidden = int(2/3 * ffn_ratio * dim) rounded up to ``align_to``."""

    def __init__(self, dim: int, ffn_ratio: float = 4.0, align_to: int = 64):
        super().__init__()
        d = int(int(dim * ffn_ratio) * 2 / 3)
        hidden = d + (-d % align_to)
        self.w1 = nn.Linear(dim, hidden)
        self.w2 = nn.Linear(dim, hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.w3(F.silu(self.w1(x)) * self.w2(x))


class DINOTxtVisionHead(nn.Module):
    """Transformer blocks (no RoPE, no qkv bias, SwiGLU) + ``ln_final`` on backbone tokens.

    tokens [B, 1+S+N, dim] (final-norm CLS, storage, patches) -> [B, 1+S+N, embed_dim/2]. ``linear_projection``
    is Identity (no keys) when ``embed_dim == 2 * dim``, as in the released model.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        num_blocks: int = 2,
        embed_dim: Optional[int] = None,
        norm_eps: float = 1e-5,
    ):
        super().__init__()
        embed_dim = embed_dim or 2 * dim
        self.blocks = nn.ModuleList(
            Block(dim, num_heads, SwiGLUFFN(dim), masked_qkv_bias=False, norm_eps=norm_eps) for _ in range(num_blocks)
        )
        self.ln_final = nn.LayerNorm(dim, eps=norm_eps)
        self.linear_projection = nn.Identity() if embed_dim == 2 * dim else nn.Linear(dim, embed_dim // 2, bias=False)

    def forward(self, tokens: Tensor) -> Tensor:
        for block in self.blocks:
            tokens = block(tokens)
        return self.linear_projection(self.ln_final(tokens))


class TextBlock(nn.Module):
    """Pre-norm causal block without LayerScale: x [N, L, width] -> [N, L, width]."""

    def __init__(self, width: int, heads: int, ffn_ratio: float = 4.0, norm_eps: float = 1e-5):
        super().__init__()
        self.attention_norm = nn.LayerNorm(width, eps=norm_eps)
        self.attention = Attention(width, heads, is_causal=True)
        self.ffn_norm = nn.LayerNorm(width, eps=norm_eps)
        self.feed_forward = Mlp(width, int(width * ffn_ratio))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attention(self.attention_norm(x))
        return x + self.feed_forward(self.ffn_norm(x))


class TextTransformer(nn.Module):
    """Causal text transformer: ids [N, L] -> tokens after ``ln_final`` [N, L, width]."""

    def __init__(
        self,
        context_length: int = 77,
        vocab_size: int = 49408,
        width: int = 1280,
        heads: int = 20,
        layers: int = 24,
        ffn_ratio: float = 4.0,
        norm_eps: float = 1e-5,
    ):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.randn(context_length, width) * 0.01)
        self.blocks = nn.ModuleList(TextBlock(width, heads, ffn_ratio, norm_eps) for _ in range(layers))
        self.ln_final = nn.LayerNorm(width, eps=norm_eps)

    def forward(self, ids: Tensor) -> Tensor:
        x = self.token_embedding(ids) + self.positional_embedding[: ids.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.ln_final(x)


class DINOTxtTextTower(nn.Module):
    """Text tower: ids [N, L] -> unnormalised embeddings [N, output_dim], pooled at the first EOT
    (``ids.argmax(-1)``, EOT being the largest id) and projected without bias."""

    def __init__(
        self,
        context_length: int = 77,
        vocab_size: int = 49408,
        width: int = 1280,
        heads: int = 20,
        layers: int = 24,
        output_dim: int = 2048,
        ffn_ratio: float = 4.0,
        norm_eps: float = 1e-5,
    ):
        super().__init__()
        self.backbone = TextTransformer(context_length, vocab_size, width, heads, layers, ffn_ratio, norm_eps)
        # Meta's text head: no blocks, no final norm, only ``head.linear_projection``
        self.head = nn.ModuleDict({"linear_projection": nn.Linear(width, output_dim, bias=False)})
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """CLIP's initialisation of its text transformer (``CLIP.initialize_parameters``; released weights replace
        it). PyTorch's default N(0, 1) token embeddings would dwarf what attention adds to the pooled EOT token:
        every prompt of a random tower then pools nearly the same vector (pairwise cosine 0.98 for two-word
        names), and a tower trained from scratch starts with nothing that tells the classes apart."""
        width, layers = self.backbone.ln_final.normalized_shape[0], len(self.backbone.blocks)
        attn_std, fc_std = width**-0.5, (2 * width) ** -0.5
        proj_std = attn_std * (2 * layers) ** -0.5
        nn.init.normal_(self.backbone.token_embedding.weight, std=0.02)
        nn.init.normal_(self.backbone.positional_embedding, std=0.01)
        for block in self.backbone.blocks:
            nn.init.normal_(block.attention.qkv.weight, std=attn_std)
            nn.init.normal_(block.attention.proj.weight, std=proj_std)
            nn.init.normal_(block.feed_forward.fc1.weight, std=fc_std)
            nn.init.normal_(block.feed_forward.fc2.weight, std=proj_std)
        nn.init.normal_(self.head["linear_projection"].weight, std=attn_std)

    def forward(self, ids: Tensor) -> Tensor:
        eot = ids.argmax(dim=-1)
        # Attention is causal, so tokens after the last EOT cannot change any pooled token: run only up to it
        # (prompts are ~10 tokens of the 77-token context, a several-fold saving with identical results).
        tokens = self.backbone(ids[:, : int(eot.max()) + 1])
        pooled = tokens[torch.arange(ids.shape[0], device=ids.device), eot]
        return self.head["linear_projection"](pooled)


class LoadResult(NamedTuple):
    missing_keys: List[str]
    unexpected_keys: List[str]


# released-file prefix -> our module prefix
FILE_PREFIXES = {
    "visual_model.backbone.": "backbone.",
    "visual_model.head.": "vision_head.",
    "text_model.": "text.",
    "logit_scale": "logit_scale",
}


class DINOTxt(nn.Module):
    """DINOv3 backbone + dinov3.txt vision head + text tower + ``logit_scale``.

    Images [B, 3, H, W] (ImageNet-normalised, H, W multiples of 16); token ids [N, 77] from ``Tokenizer``.
    """

    def __init__(self, backbone: DINOv3ViT, vision_head: DINOTxtVisionHead, text: DINOTxtTextTower):
        super().__init__()
        self.backbone = backbone
        self.vision_head = vision_head
        self.text = text
        self.logit_scale = nn.Parameter(torch.full((1,), math.log(1 / 0.07)))

    def backbone_tokens(self, images: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """Final-norm last-block tokens: cls [B, D], storage [B, S, D], patches [B, h*w, D]."""
        ((patches, cls, storage),) = self.backbone.get_intermediate_layers(
            images, n=1, return_class_token=True, return_extra_tokens=True
        )
        return cls, storage, patches

    def head_tokens(self, images: Tensor) -> Tuple[Tensor, Tensor]:
        """Vision-head outputs: cls [B, D], patches [B, h*w, D]."""
        cls, storage, patches = self.backbone_tokens(images)
        tokens = self.vision_head(torch.cat([cls[:, None], storage, patches], dim=1))
        return tokens[:, 0], tokens[:, 1 + storage.shape[1] :]

    def encode_image(self, images: Tensor, use_head: bool = True) -> Tuple[Tensor, Tensor]:
        """images [B, 3, H, W] -> (cls [B, D], patches [B, D, h, w]), unnormalised.

        use_head: True gives the vision-head features (dinov3.txt space), False the raw backbone final-norm ones.
        """
        if use_head:
            cls, patches = self.head_tokens(images)
        else:
            cls, _, patches = self.backbone_tokens(images)
        p = self.backbone.patch_size
        h, w = images.shape[-2] // p, images.shape[-1] // p
        return cls, patches.transpose(1, 2).reshape(patches.shape[0], -1, h, w)

    def image_features(self, images: Tensor) -> Tensor:
        """Global image embedding [B, 2D] = [head CLS ; mean head patch], unnormalised."""
        cls, patches = self.head_tokens(images)
        return torch.cat([cls, patches.mean(dim=1)], dim=-1)

    def encode_text(self, ids: Tensor) -> Tensor:
        """ids [N, L] -> [N, 2D] unnormalised; [:, :D] aligns with CLS, [:, D:] with the mean patch token."""
        return self.text(ids)

    def get_logits(self, images: Tensor, ids: Tensor) -> Tensor:
        """Scaled cosine similarity [B, N] between ``image_features`` and ``encode_text``."""
        image = F.normalize(self.image_features(images), dim=-1)
        text = F.normalize(self.encode_text(ids), dim=-1)
        return self.logit_scale.exp() * image @ text.T

    def load_dinotxt_state_dict(self, file_state_dict: Dict[str, Tensor]) -> LoadResult:
        """Loads the released head + text file (Meta key names, e.g.
        ``dinov3_vitl16_dinotxt_vision_head_and_text_encoder-a442d8f5.pth``); the backbone is loaded separately.

        Strict for the vision head and text tower. A missing ``logit_scale`` is tolerated (kept at log(1/0.07))
        and reported in ``missing_keys``; any other missing or unexpected key raises ``KeyError``. A head and text
        tower built on the meta device take the file's tensors themselves (``assign``, no copy).
        """
        mapped, unexpected = {}, []
        for key, value in file_state_dict.items():
            prefix = next((p for p in FILE_PREFIXES if key.startswith(p)), None)
            if prefix is None:
                unexpected.append(key)
            else:
                mapped[FILE_PREFIXES[prefix] + key[len(prefix) :]] = value
        assign = on_meta(self.vision_head) or on_meta(self.text)
        if assign:  # only tensors of another dtype are cast; the rest stay views of the (memory-mapped) file
            mapped = fit_dtypes(mapped, self.state_dict())
        result = self.load_state_dict(mapped, strict=False, assign=assign)
        unexpected += result.unexpected_keys
        missing = [k for k in result.missing_keys if not k.startswith("backbone.")]
        if unexpected or [k for k in missing if k != "logit_scale"]:
            raise KeyError(f"dinov3.txt state dict mismatch: missing {missing}, unexpected {unexpected}")
        return LoadResult(missing, unexpected)


def dinov3_vitl16_dinotxt(backbone: Optional[DINOv3ViT] = None) -> DINOTxt:
    """Full-size dinov3.txt on ViT-L/16: 2 head blocks (16 heads, SwiGLU hidden 2752), text tower width 1280,
    24 layers, 20 heads, projection to 2048."""
    backbone = backbone or dinov3_vitl16()
    head = DINOTxtVisionHead(backbone.embed_dim, backbone.num_heads, num_blocks=2, embed_dim=2048)
    return DINOTxt(backbone, head, DINOTxtTextTower())
