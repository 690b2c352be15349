"""The benchmark as data, in one place: suites (the paper's Tables 1-5 and the test sets the
reference evaluates), their generator folders and aliases, how each is pre-processed, the
paper's numbers and the published image counts where known, and where every suite and the
weights are published (``SOURCES``, read by ``tools/download.py``).

This is the one place to map folder names: add an alias to ``folders`` (matched
case-insensitively) when your copy of a dataset spells a folder differently.
"""
import os
from dataclasses import dataclass, field

from util import printable, UserError

from .discovery import find_child, is_leaf, require_folder


@dataclass(frozen=True)
class Generator:
    name: str                    # shown in tables
    folders: tuple               # folder names on disk, first match wins (case-insensitive)
    paper_acc: float = None      # %, from the paper's tables
    paper_ap: float = None
    in_mean: bool = True         # False: shown, but left out of the suite's Mean row
    published: object = None     # the published image count: (real, fake), or the total (an int); None: unknown


@dataclass(frozen=True)
class Suite:
    name: str
    dirs: tuple                  # candidate folders under --dataroot (case-insensitive, may contain '/')
    generators: tuple
    resize: bool                 # resize to loadSize x loadSize before the model
    crop: bool                   # centre crop to cropSize (small images are tiled up first)
    note: str = ""
    custom: bool = field(default=False, compare=False)
    counts_from: str = ""        # where the generators' published counts come from


def G(name, *folders, acc=None, ap=None, in_mean=True, published=None):
    return Generator(name, tuple(folders) or (name,), acc, ap, in_mean, published)


MINI_ROOT = "datasets/npr-mini"  # where NPR-mini is built (data/mini.py) and looked for
MINI_GENERATORS = ("nn_conv", "bilinear_conv", "transposed_conv", "pixel_shuffle")  # built by data/mini.py
MINI_THIRD_PARTY = ("cyclegan_vintage",)  # trained GANs shipped in pip packages (data/mini.py, THIRD_PARTY)
MINI_TEST_PER_GENERATOR = 200  # real test images per generator, and as many fakes (data/mini.py)

SUITES = (
    Suite("ForenSynths", ("ForenSynths", "CNN_synth_testset", "ForenSynths_train_val/test", "ForenSynths/test"), (
        G("ProGAN", "progan", acc=99.8, ap=100.0), G("StyleGAN", "stylegan", acc=96.3, ap=99.8),
        G("StyleGAN2", "stylegan2", acc=97.3, ap=100.0), G("BigGAN", "biggan", acc=87.5, ap=94.5),
        G("CycleGAN", "cyclegan", acc=95.0, ap=99.5), G("StarGAN", "stargan", acc=99.7, ap=100.0),
        G("GauGAN", "gaugan", acc=86.6, ap=88.8), G("Deepfake", "deepfake", acc=77.4, ap=86.2)),
        resize=True, crop=False, note="Table 1"),
    Suite("GANGen-Detection", ("GANGen-Detection", "GANGen_Detection"), tuple(G(n, n, published=2000) for n in (
        "AttGAN", "BEGAN", "CramerGAN", "InfoMaxGAN", "MMDGAN", "RelGAN", "S3GAN", "SNGAN", "STGAN")),
        resize=False, crop=False, note="Table 2 (paper numbers not available here)",
        counts_from="chuangchuangtan/GANGen-Detection README: 'Each folder contains 2k real/fake images'"),
    Suite("DiffusionForensics", ("DiffusionForensics",), (
        G("ADM", "adm", acc=88.6, ap=98.9), G("DDPM", "ddpm", acc=99.8, ap=100.0),
        G("IDDPM", "iddpm", acc=91.8, ap=99.8), G("LDM", "ldm", acc=100.0, ap=100.0),
        G("PNDM", "pndm", acc=91.2, ap=100.0), G("SDv1", "sdv1_new", "sdv1", acc=97.4, ap=99.8),
        G("SDv2", "sdv2", acc=93.8, ap=100.0), G("VQ-Diffusion", "vqdiffusion", acc=100.0, ap=100.0)),
        resize=True, crop=False, note="Table 3 (paper numbers second-hand)"),
    Suite("UniversalFakeDetect", ("UniversalFakeDetect", "UniversalFakeDetect_test"), tuple(
        G(name, *folders, published=(1000, 1000)) for name, *folders in (
            ("DALLE", "dalle"), ("Glide_100_10", "glide_100_10"), ("Glide_100_27", "glide_100_27"),
            ("Glide_50_27", "glide_50_27"), ("ADM", "guided", "adm"), ("LDM_100", "ldm_100"),
            ("LDM_200", "ldm_200"), ("LDM_200_cfg", "ldm_200_cfg"))),
        resize=True, crop=False, note="Table 4 (paper numbers not available here)",
        counts_from="WisconsinAIVision/UniversalFakeDetect README: '1k images fake images and 1k real images for "
                    "each domain'"),
    Suite("AIGCDetectBenchmark", ("AIGCDetectBenchmark", "AIGCDetect_testset", "AIGCDetectBenchmark/test"), (
        G("ProGAN", "progan", acc=99.9), G("StyleGAN", "stylegan", acc=96.1), G("BigGAN", "biggan", acc=87.3),
        G("CycleGAN", "cyclegan", acc=90.3), G("StarGAN", "stargan", acc=99.6), G("GauGAN", "gaugan", acc=85.4),
        G("StyleGAN2", "stylegan2", acc=98.1), G("WFIR", "whichfaceisreal", acc=60.7),
        G("ADM", "ADM", acc=84.9), G("Glide", "Glide", acc=96.7), G("Midjourney", "Midjourney", acc=92.6),
        G("SDv1.4", "stable_diffusion_v_1_4", acc=97.4), G("SDv1.5", "stable_diffusion_v_1_5", acc=97.5),
        G("VQDM", "VQDM", acc=90.1), G("Wukong", "wukong", acc=91.7), G("DALLE2", "DALLE2", acc=99.6)),
        resize=False, crop=False, note="mixed image sizes: batched by size"),
    Suite("GenImage", ("GenImage",), (
        G("ADM", "ADM", acc=87.8, ap=96.0), G("BigGAN", "BigGAN", acc=80.7, ap=89.8),
        G("Glide", "glide", acc=93.2, ap=99.1), G("Midjourney", "Midjourney", acc=91.7, ap=97.9),
        G("SDv1.4", "stable_diffusion_v_1_4", in_mean=False), G("SDv1.5", "stable_diffusion_v_1_5", acc=94.4, ap=99.9),
        G("VQDM", "VQDM", acc=88.7, ap=96.1), G("Wukong", "wukong", acc=94.0, ap=99.7)),
        resize=False, crop=True,
        note="paper column: a model trained on SDv1.4, not ProGAN; Mean over the 7 other generators, as the "
             "paper's GenImage table; small images tiled up to the crop"),
    Suite("Diffusion1kStep", ("Diffusion1kStep",), (
        G("DALLE", "DALLE", "dalle"), G("DDPM", "ddpm"), G("Guided", "guided-diffusion"),
        G("Improved", "improved-diffusion"), G("Midjourney", "midjourney")),
        resize=True, crop=False, note="Table 5"),
    Suite("NPR-mini", ("npr-mini/test",), tuple(
        G(n, n, published=(MINI_TEST_PER_GENERATOR, MINI_TEST_PER_GENERATOR)) for n in MINI_GENERATORS + MINI_THIRD_PARTY),
        resize=False, crop=False, note="built-in mini benchmark; trained on nn_conv only; cyclegan_vintage is a "
                                       "third-party CycleGAN (the vintagify package)",
        counts_from=f"data/mini.py: {MINI_TEST_PER_GENERATOR} real test images per generator and as many fakes"),
)


# ----------------------------------------------------------------------------- sources
# Where the paper's data and weights are published. Each entry says how to fetch it (a direct
# URL, a Google Drive file or folder through the ``gdown`` package, or by hand only), the
# archives it yields, the folder ``test.py`` expects after extraction, the disk it needs, and the
# manual link to use when a scripted download fails. Sizes and checksums are given where the
# publisher states them (none of these publishers gives a checksum).

@dataclass(frozen=True)
class Source:
    name: str              # what the user types: python -m tools.download <name>
    kind: str              # "url", "gdrive_file", "gdrive_folder" or "manual"
    location: str = ""     # the URL, or the Google Drive id
    archives: tuple = ()   # expected archive names ("*.tar.gz": every file of a folder download)
    target: str = ""       # folder under --root that test.py / train.py read after extraction
    disk: str = ""         # the space it needs, as published or measured
    manual: str = ""       # where a person downloads it by hand
    sha256: tuple = ()     # (archive, sha256) pairs, where published
    note: str = ""
    suite: str = ""        # the suite it installs (its target is one of the suite's folders); "" for weights, training data

    @property
    def url(self):
        if self.kind == "gdrive_file":
            return f"https://drive.google.com/uc?id={self.location}"
        if self.kind == "gdrive_folder":
            return f"https://drive.google.com/drive/folders/{self.location}"
        return self.location


SOURCES = (
    Source("ForenSynths", "url",
           "https://huggingface.co/datasets/sywang/CNNDetection/resolve/main/CNN_synth_testset.zip",
           ("CNN_synth_testset.zip",), "CNN_synth_testset", "about 19 GB (UniversalFakeDetect README)",
           "https://drive.google.com/file/d/1z_fD3UKgWQyOTZIBbYSaQ-hz4AzUrLC1/view (CNNDetection README)",
           note="CNNDetection's test set (Wang et al., CVPR 2020): Table 1's eight generators and more",
           suite="ForenSynths"),
    Source("ForenSynths-train", "gdrive_file", "1iVNBV0glknyTYGA9bCxT_d0CVTOgGcKh", ("trainset.zip",),
           "ForenSynths_train_val/train", "about 72 GB (UniversalFakeDetect README)",
           "https://drive.google.com/file/d/1iVNBV0glknyTYGA9bCxT_d0CVTOgGcKh/view (CNNDetection README; "
           "alternatives there)",
           note="ProGAN training set, 20 LSUN categories; the paper trains on car, cat, chair, horse"),
    Source("ForenSynths-val", "gdrive_file", "1FU7xF8Wl_F8b0tgL0529qg2nZ_RpdVNL", ("valset.zip",),
           "ForenSynths_train_val/val", "",
           "https://drive.google.com/file/d/1FU7xF8Wl_F8b0tgL0529qg2nZ_RpdVNL/view (CNNDetection README)"),
    Source("GANGen-Detection", "gdrive_folder", "11E0Knf9J1qlv2UuTnJSOFUjIIi90czSj", ("*.tar.gz",),
           "GANGen-Detection", "",
           "https://drive.google.com/drive/folders/11E0Knf9J1qlv2UuTnJSOFUjIIi90czSj "
           "(chuangchuangtan/GANGen-Detection README)", suite="GANGen-Detection"),
    Source("DiffusionForensics", "gdrive_folder", "1tKsOU-6FDdstrrKLPYuZ7RpQwtOSHxUD", ("*.tar.gz",),
           "DiffusionForensics", "",
           "https://drive.google.com/drive/folders/1tKsOU-6FDdstrrKLPYuZ7RpQwtOSHxUD (the DIRE release, "
           "ZhendongWang6/DIRE)", suite="DiffusionForensics"),
    Source("UniversalFakeDetect", "gdrive_file", "1nkCXClC7kFM01_fqmLrVNtnOYEFPtWO-", ("diffusion_datasets.zip",),
           "UniversalFakeDetect", "",
           "https://drive.google.com/file/d/1FXlGIRh_Ud3cScMgSVDbEWmPDmjcrm1t/view (UniversalFakeDetect README)",
           note="1k real and 1k fake images per diffusion domain", suite="UniversalFakeDetect"),
    Source("AIGCDetectBenchmark", "gdrive_folder", "1BUv1MT1cm90QN3WTMHLEr8PXBsKGxKC9", ("test.zip", "test.z*"),
           "AIGCDetectBenchmark", "",
           "https://drive.google.com/drive/folders/1p4ewuAo7d5LbNJ4cKyh10Xl9Fg2yoFOw or BaiduNetdisk "
           "(Ekko-zn/AIGCDetectBenchmark README)",
           note="a split zip (test.z01, test.z02, ..., test.zip), joined before extraction", suite="AIGCDetectBenchmark"),
    Source("Diffusion1kStep", "gdrive_folder", "14f0vApTLiukiPvIHukHDzLujrvJpDpRq", ("*.tar.gz",),
           "Diffusion1kStep", "",
           "https://drive.google.com/drive/folders/14f0vApTLiukiPvIHukHDzLujrvJpDpRq (the NPR authors' release)",
           suite="Diffusion1kStep"),
    Source("GenImage", "manual", "", (), "GenImage", "",
           "https://github.com/GenImage-Dataset/GenImage (Google Drive and BaiduNetdisk links there)",
           note="no scripted source: download the generators' val folders by hand and arrange them as "
                "GenImage/<generator>/{0_real,1_fake} (GenImage's nature / ai)", suite="GenImage"),
    Source("weights", "url", "https://github.com/chuangchuangtan/NPR-DeepfakeDetection/raw/main/NPR.pth",
           ("NPR.pth",), "", "about 5.8 MB (1,437,761 float32 parameters)",
           "https://github.com/chuangchuangtan/NPR-DeepfakeDetection (NPR.pth in the repository)",
           note="the authors' ProGAN 4-class detector; written to --weights_path"),
    Source("safe-weights", "url", "https://github.com/Ouxiang-Li/SAFE/raw/main/checkpoint/checkpoint-best.pth",
           ("SAFE-checkpoint-best.pth",), "", "",
           "https://github.com/Ouxiang-Li/SAFE (checkpoint/checkpoint-best.pth in the repository)",
           note="SAFE's ProGAN 4-class detector (Li et al., KDD 2025), a training checkpoint of its code; "
                "written beside --weights_path; test.py reads it as it is (the dwt operator)"),
)


def source_by_name(name):
    for s in SOURCES:
        if s.name.lower() == name.lower():
            return s
    return None


# ----------------------------------------------------------------------------- finding suites on disk

def suite_by_name(name):
    for s in SUITES:
        if s.name.lower() == name.lower():
            return s
    return None


def has_leaves(path):
    """True when ``path`` is a leaf or holds category folders that are leaves."""
    if not os.path.isdir(path):
        return False
    return is_leaf(path) or any(is_leaf(os.path.join(path, d)) for d in os.listdir(path))


def locate_suite(dataroot, suite):
    """Folder of ``suite`` under ``dataroot`` (or ``dataroot`` itself when it is that folder); None if absent."""
    base = os.path.basename(os.path.normpath(dataroot)).lower()
    for d in suite.dirs:
        if base == d.split("/")[-1].lower() and not find_child(dataroot, d):
            if any(find_child(dataroot, f) for g in suite.generators for f in g.folders):
                return dataroot
        path = find_child(dataroot, d)
        if path:
            return path
    return None


def locate_generator(suite_dir, gen):
    for f in gen.folders:
        path = find_child(suite_dir, f)
        if path and has_leaves(path):
            return path
    return None


def custom_suite(path):
    """A suite made of every generator folder under ``path`` (no resize, no crop)."""
    # names as tables and result files can hold them (a folder name that is not UTF-8 crashed the CSV)
    gens = tuple(G(printable(d), d) for d in sorted(os.listdir(path)) if has_leaves(os.path.join(path, d)))
    name = printable(os.path.basename(os.path.normpath(path)))
    if not gens and is_leaf(path):
        gens = (G(name, "."),)
    return Suite(name, (path,), gens, resize=False, crop=False,
                 note="custom suite: every generator folder, no resize, no crop", custom=True)


def find_suites(dataroot, wanted=()):
    """[(suite, folder)] to evaluate and the names of the suites asked for with --suites that are
    absent (suites nobody asked for are not mentioned)."""
    require_folder(dataroot, "--dataroot")
    found, used = [], set()
    for suite in SUITES:
        path = locate_suite(dataroot, suite)
        if path:
            found.append((suite, path))
            used.add(os.path.normcase(os.path.abspath(path)))
    for d in sorted(os.listdir(dataroot)):
        path = os.path.join(dataroot, d)
        if os.path.normcase(os.path.abspath(path)) in used or not os.path.isdir(path):
            continue
        if any(os.path.normcase(os.path.abspath(u)).startswith(os.path.normcase(os.path.abspath(path)) + os.sep)
               for u in used):
            continue  # a parent of a known suite's folder (e.g. npr-mini holding test/)
        suite = custom_suite(path)
        if suite.generators:
            found.append((suite, path))
    if not found and has_leaves(dataroot):
        found.append((custom_suite(dataroot), dataroot))
    missing = []
    if wanted:
        names = {s.name.lower() for s, _ in found}
        for w in wanted:
            if w.lower() in names:
                continue
            if suite_by_name(w) is None:
                known = ", ".join(s.name for s in SUITES)
                raise UserError(f"--suites: unknown suite '{w}'; known suites: {known}, or a folder name under "
                                f"'{dataroot}'")
            missing.append(w)
        found = [(s, p) for s, p in found if s.name.lower() in {w.lower() for w in wanted}]
    return found, missing
