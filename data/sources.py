"""Where the paper's data and weights are published: one table, read by ``data/download.py``.

Each entry says how to fetch it (a direct URL, a Google Drive file or folder through the
``gdown`` package, or by hand only), the archives it yields, the folder ``test.py`` expects
after extraction, the disk it needs, and the manual link to use when a scripted download fails.
Sizes and checksums are given where the publisher states them (none of these publishers
gives a checksum).
"""
from dataclasses import dataclass


@dataclass(frozen=True)
class Source:
    name: str              # what the user types: python -m data.download <name>
    kind: str              # "url", "gdrive_file", "gdrive_folder" or "manual"
    location: str = ""     # the URL, or the Google Drive id
    archives: tuple = ()   # expected archive names ("*.tar.gz": every file of a folder download)
    target: str = ""       # folder under --root that test.py / train.py read after extraction
    disk: str = ""         # the space it needs, as published or measured
    manual: str = ""       # where a person downloads it by hand
    sha256: tuple = ()     # (archive, sha256) pairs, where published
    note: str = ""

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
           note="CNNDetection's test set (Wang et al., CVPR 2020): Table 1's eight generators and more"),
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
           "(chuangchuangtan/GANGen-Detection README)"),
    Source("DiffusionForensics", "gdrive_folder", "1tKsOU-6FDdstrrKLPYuZ7RpQwtOSHxUD", ("*.tar.gz",),
           "DiffusionForensics", "",
           "https://drive.google.com/drive/folders/1tKsOU-6FDdstrrKLPYuZ7RpQwtOSHxUD (the DIRE release, "
           "ZhendongWang6/DIRE)"),
    Source("UniversalFakeDetect", "gdrive_file", "1nkCXClC7kFM01_fqmLrVNtnOYEFPtWO-", ("diffusion_datasets.zip",),
           "UniversalFakeDetect", "",
           "https://drive.google.com/file/d/1FXlGIRh_Ud3cScMgSVDbEWmPDmjcrm1t/view (UniversalFakeDetect README)",
           note="1k real and 1k fake images per diffusion domain"),
    Source("AIGCDetectBenchmark", "gdrive_folder", "1BUv1MT1cm90QN3WTMHLEr8PXBsKGxKC9", ("test.zip", "test.z*"),
           "AIGCDetectBenchmark", "",
           "https://drive.google.com/drive/folders/1p4ewuAo7d5LbNJ4cKyh10Xl9Fg2yoFOw or BaiduNetdisk "
           "(Ekko-zn/AIGCDetectBenchmark README)",
           note="a split zip (test.z01, test.z02, ..., test.zip), joined before extraction"),
    Source("Diffusion1kStep", "gdrive_folder", "14f0vApTLiukiPvIHukHDzLujrvJpDpRq", ("*.tar.gz",),
           "Diffusion1kStep", "",
           "https://drive.google.com/drive/folders/14f0vApTLiukiPvIHukHDzLujrvJpDpRq (the NPR authors' release)"),
    Source("GenImage", "manual", "", (), "GenImage", "",
           "https://github.com/GenImage-Dataset/GenImage (Google Drive and BaiduNetdisk links there)",
           note="no scripted source: download the generators' val folders by hand and arrange them as "
                "GenImage/<generator>/{0_real,1_fake} (GenImage's nature / ai)"),
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
