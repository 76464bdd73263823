"""Config keys of dinov3seg. Every switch of DESIGN.md is one key here, set to its default."""
from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg


def get_dinov3seg_cfg(config_file: str, opts=()):
    """A Detectron2 config with the dinov3seg keys, merged with ``config_file`` and ``opts`` (KEY VALUE ...)."""
    cfg = get_cfg()
    add_dinov3seg_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    return cfg


def load_config(config_file: str, opts=()):
    """:func:`get_dinov3seg_cfg` for command-line tools: a file or override yacs cannot merge (unknown key,
    wrong type, odd override list) is a :class:`~dinov3seg.errors.ConfigError` naming both."""
    from .errors import ConfigError

    try:
        return get_dinov3seg_cfg(config_file, opts)
    except (KeyError, ValueError, AssertionError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        raise ConfigError(f"--config-file {config_file} with overrides {list(opts)}: {message}") from err


def add_dinov3seg_config(cfg):
    """Add the dinov3seg keys to a Detectron2 config (in place)."""
    cfg.MODEL.META_ARCHITECTURE = "DINOv3Seg"
    cfg.MODEL.SEM_SEG_HEAD.NAME = "DINOv3SegHead"
    # One normalisation (ImageNet mean/std, RGB, 0-255) shared by DINOv3, SAM and AnyUp.
    cfg.MODEL.PIXEL_MEAN = [123.675, 116.28, 103.53]
    cfg.MODEL.PIXEL_STD = [58.395, 57.12, 57.375]
    cfg.INPUT.FORMAT = "RGB"
    # Training crops are re-drawn (up to 10 times) while one class covers more than this fraction.
    cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = 1.0
    # SSD photometric augmentation of training crops (brightness, contrast, saturation, hue), as CAT-Seg trains.
    cfg.INPUT.COLOR_AUG_SSD = True

    # --- Weight files ---
    # sha256 check of the files whose released name carries a hash prefix (the two DINOv3 files): "warn" logs a
    # mismatch and loads (re-saved / converted copies are common; strict key + shape checks always run),
    # "error" refuses the file, "off" skips hashing.
    cfg.MODEL.WEIGHT_HASH_CHECK = "warn"
    # Folder searched for a MODEL.*.WEIGHTS value that is a bare file name (the configs give the released names),
    # before $DINOV3SEG_WEIGHTS and ./weights; a value with a folder part is used as it is. "" = not set.
    cfg.MODEL.ENCODER_WEIGHTS_DIR = ""

    # --- DINOv3 ViT backbone (frozen) ---
    cfg.MODEL.DINOV3 = CN()
    # dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth, a .safetensors (Meta or Hugging Face keys) or a Hugging Face
    # folder (config.json + model*.safetensors, or a hub-cache snapshot); "" = random init
    cfg.MODEL.DINOV3.WEIGHTS = ""
    cfg.MODEL.DINOV3.EMBED_DIM = 1024
    cfg.MODEL.DINOV3.DEPTH = 24
    cfg.MODEL.DINOV3.NUM_HEADS = 16

    # --- dinov3.txt: vision head + text tower ---
    cfg.MODEL.DINOTXT = CN()
    cfg.MODEL.DINOTXT.WEIGHTS = ""  # dinov3_vitl16_dinotxt_vision_head_and_text_encoder-a442d8f5.pth
    cfg.MODEL.DINOTXT.USE_VISION_HEAD = True  # patch features after the 2 head blocks (False: raw backbone)
    cfg.MODEL.DINOTXT.TEXT_WIDTH = 1280
    cfg.MODEL.DINOTXT.TEXT_HEADS = 20
    cfg.MODEL.DINOTXT.TEXT_LAYERS = 24
    # Which text-tower parameters are trained: "none", "attention" (qkv + proj), "embeddings" (token embeddings +
    # output projection: the words move, the frozen transformer keeps composing them) or "full".
    cfg.MODEL.DINOTXT.TEXT_FINETUNE = "none"

    # --- AnyUp early refinement (frozen) ---
    cfg.MODEL.ANYUP = CN()
    cfg.MODEL.ANYUP.ENABLED = True  # False: cost volume on the raw patch features (CAT-Seg has no refinement)
    cfg.MODEL.ANYUP.WEIGHTS = ""  # anyup_multi_backbone.pth (or anyup_paper.pth)
    # 16: refine in place on the patch grid; 8 or 4: upsample, build the cost volume there and
    # average-pool it back to the patch grid.
    cfg.MODEL.ANYUP.OUTPUT_STRIDE = 16
    cfg.MODEL.ANYUP.QUERY_CHUNK_SIZE = 4096  # query pixels per attention chunk (bounds memory)
    cfg.MODEL.ANYUP.QK_DIM = 128  # width of AnyUp's encoders; the released weights need 128

    # --- SAM semantic prior encoder (frozen) ---
    cfg.MODEL.SAM = CN()
    # False: no guidance in spatial refinement and decoder. (CAT-Seg takes its guidance from its CLIP
    # encoder's own layers; DESIGN.md takes it from SAM: see docs/catseg_differences.md.)
    cfg.MODEL.SAM.ENABLED = True
    cfg.MODEL.SAM.WEIGHTS = ""  # sam_vit_l_0b3195.pth or sam_vit_b_01ec64.pth
    cfg.MODEL.SAM.VARIANT = "vit_l"  # "vit_l", "vit_b" or "custom" (the three keys below)
    cfg.MODEL.SAM.EMBED_DIM = 1024  # used by "custom" only
    cfg.MODEL.SAM.DEPTH = 24  # used by "custom" only
    cfg.MODEL.SAM.NUM_HEADS = 16  # used by "custom" only
    cfg.MODEL.SAM.GLOBAL_ATTN_INDEXES = [5, 11, 17, 23]  # used by "custom" only
    # SAM input side: 0 = the view itself (384 -> 24x24, pos_embed resampled); 1024 = SAM's own size.
    cfg.MODEL.SAM.INPUT_SIZE = 0
    # Which hooked global-attention blocks (indexes into the global block list) guide the decoder
    # stages at 1/8 and 1/4 of the view, in that order.
    cfg.MODEL.SAM.DECODER_GUIDANCE = [1, 2]

    # --- dinov3.seg head ---
    cfg.MODEL.DINOV3SEG = CN()
    cfg.MODEL.DINOV3SEG.VIEW_SIZE = 384  # side of one view; a multiple of 16 (384 -> 24x24 patches)
    # Class names: "" = the dataset's MetadataCatalog stuff_classes; else a JSON list of names
    # (synonyms comma-separated inside one entry).
    cfg.MODEL.DINOV3SEG.TRAIN_CLASS_JSON = ""
    cfg.MODEL.DINOV3SEG.TEST_CLASS_JSON = ""
    # Prompt templates: "single" (CAT-Seg's "A photo of a {} in the scene", no period), "imagenet" (the 80
    # ImageNet templates) or a path to a text file
    # with one template per line containing "{}".
    cfg.MODEL.DINOV3SEG.PROMPT_TEMPLATES = "single"
    # Text halves that feed the cost volume: "local" (patch-aligned), "global" (CLS-aligned). ["local"] is
    # CAT-Seg's one text embedding per prompt; both halves are DESIGN.md's departure.
    cfg.MODEL.DINOV3SEG.TEXT_CHANNELS = ["local", "global"]
    # Disk cache of class-name embeddings, one file per class (keyed by synonyms, templates and the text weights'
    # content hash): "auto" = $DINOV3SEG_CACHE_DIR/text_embeddings, else $XDG_CACHE_HOME or ~/.cache/dinov3seg/
    # text_embeddings; a folder; or "" = memory only.
    cfg.MODEL.DINOV3SEG.TEXT_CACHE_DIR = "auto"
    cfg.MODEL.DINOV3SEG.COST_EMBED_DIM = 128  # channels after the per-class 7x7 cost embedding
    cfg.MODEL.DINOV3SEG.GUIDANCE_DIM = 128  # projected SAM (appearance) guidance width
    cfg.MODEL.DINOV3SEG.TEXT_GUIDANCE_DIM = 128  # projected text guidance width
    cfg.MODEL.DINOV3SEG.NUM_REFINEMENT_ROUNDS = 2  # rounds of (spatial + class) refinement
    cfg.MODEL.DINOV3SEG.WINDOW_SIZE = 12  # Swin window on the patch grid (shift = half of it)
    cfg.MODEL.DINOV3SEG.NUM_HEADS = 4  # heads of spatial and class attention
    cfg.MODEL.DINOV3SEG.CLASS_ATTENTION = "linear"  # "linear" or "full" (softmax) across classes
    # Class aggregation average-pools the cost embedding by this much (CAT-Seg's POOLING_SIZES: [2, 2] in
    # training; eval.sh uses [1, 1] at test time, as CAT-Seg's eval.sh does).
    cfg.MODEL.DINOV3SEG.CLASS_POOLING = [2, 2]
    # Classes seen by class attention (CAT-Seg's pad_len): fewer classes are padded to this many with a learned
    # token; with more, each view keeps the CLASS_PAD_LEN classes of highest cost and the rest get logit -100.
    # 0 = no padding and no pruning (a different model: no padding parameters). Any positive value loads the same
    # weights, so at test time a value >= the vocabulary size keeps every class.
    cfg.MODEL.DINOV3SEG.CLASS_PAD_LEN = 256
    cfg.MODEL.DINOV3SEG.DECODER_DIMS = [64, 32]  # channels of the 1/8 and 1/4 decoder stages
    cfg.MODEL.DINOV3SEG.DECODER_GUIDANCE_DIMS = [32, 16]  # SAM guidance channels at 1/8 and 1/4
    # Channels of the transposed convs that bring the SAM maps to 1/8 and 1/4 before the 3x3 conv + ReLU to
    # DECODER_GUIDANCE_DIMS (CAT-Seg's upsample1/2 and decoder guidance projections)
    cfg.MODEL.DINOV3SEG.DECODER_GUIDANCE_UPSAMPLE_DIMS = [256, 128]
    # Classes per chunk through the per-class parts of the head at test time (0 = all at once); class
    # refinement, which needs every class, takes pixels in groups of the same token count instead.
    # Bounds the head's working memory for large vocabularies; the logits are the same (0 = CAT-Seg's one pass).
    cfg.MODEL.DINOV3SEG.CLASS_CHUNK_SIZE = 32
    # Loss: per-pixel BCE over one-hot classes. False: ignore pixels are excluded;
    # True: CAT-Seg's behaviour (ignore pixels are negatives for every class).
    cfg.MODEL.DINOV3SEG.IGNORE_AS_NEGATIVE = False
    # True: the logit bias starts at the class prior, log(1 / (T - 1)) for T training classes (RetinaNet's
    # prior init), so training starts at the prior's loss instead of spending its first steps pushing every logit
    # down. False: PyTorch's default init, as CAT-Seg (the paper recipe). See docs/quickstart.md.
    cfg.MODEL.DINOV3SEG.INIT_LOGITS_AT_CLASS_PRIOR = False
    # "auto": bf16 autocast on CUDA with bf16 and on CPUs with AMX-BF16 / AVX512-BF16, else fp32 (the pick and
    # its reason are logged); "bf16" or "fp32" force it. Norms, softmax, RoPE, cost normalisation stay fp32.
    cfg.MODEL.DINOV3SEG.PRECISION = "auto"
    # torch.compile of the parts where it pays (AnyUp's image-resolution encoders); needs a C++ compiler
    # (CPU) or Triton (CUDA). Same results; the first call of each input shape compiles.
    cfg.MODEL.COMPILE = False
    # CPU runs: glibc's malloc keeps freed buffers for reuse instead of unmapping them, so the large
    # intermediates are not page-faulted in again op by op (about a fifth faster on CPU; the process keeps its
    # peak heap until it exits). Set once per process by the first CPU run; no effect on CUDA or without glibc.
    cfg.MODEL.REUSE_FREED_CPU_MEMORY = True

    # --- Local-Global Aggregation (test time) ---
    cfg.TEST.LGA = CN()
    cfg.TEST.LGA.ENABLED = True  # False: one view, the whole image resized to VIEW_SIZE
    cfg.TEST.LGA.CANVAS = 640  # the image is resized to CANVAS x CANVAS ...
    cfg.TEST.LGA.KEEP_ASPECT = False  # ... or, if True, its short side to CANVAS
    cfg.TEST.LGA.STRIDE = 256  # window stride on the canvas (256 -> 2x2 grid, 128 -> 3x3)
    cfg.TEST.LGA.GLOBAL_VIEW = True  # add the whole image resized to one view
    cfg.TEST.LGA.GLOBAL_WEIGHT = 0.5  # weight of the global view in the final average
    cfg.TEST.LGA.AVERAGE = "probabilities"  # average "probabilities" (sigmoid) or "logits"

    # --- Training-free dinov3.txt segmentation (META_ARCHITECTURE "DINOTxtZeroShot", DESIGN.md §5b) ---
    # Head tokens and AnyUp: MODEL.DINOTXT.USE_VISION_HEAD and MODEL.ANYUP.ENABLED (configs/dinotxt_zeroshot.yaml).
    cfg.MODEL.ZEROSHOT = CN()
    # "slide": Meta's recipe (short side SHORT_SIDE, WINDOW windows at STRIDE, softmaxes averaged);
    # "whole": the whole resized image in one pass; "lga": our Local-Global Aggregation (TEST.LGA.*, VIEW_SIZE).
    cfg.MODEL.ZEROSHOT.MODE = "slide"
    cfg.MODEL.ZEROSHOT.SHORT_SIDE = 512  # "slide" / "whole": short side resized to this (Pillow bicubic); 0 = keep
    cfg.MODEL.ZEROSHOT.WINDOW = 384  # "slide": window side; the last window of a row / column is flush
    cfg.MODEL.ZEROSHOT.STRIDE = 192  # "slide": window stride

    # --- Evaluation ---
    # Also report mIoU on classes seen / unseen in training (DATASETS.TRAIN[0]'s vocabulary,
    # matched by name and synonyms) and their harmonic mean.
    cfg.TEST.SEEN_UNSEEN = False

    # --- Optimisation ---
    cfg.SOLVER.OPTIMIZER = "ADAMW"
    cfg.SOLVER.ENCODER_LR_MULTIPLIER = 0.01  # LR multiplier of tuned encoder parameters
    cfg.SOLVER.WEIGHT_DECAY_EMBED = 0.0  # weight decay of embeddings and tokens
