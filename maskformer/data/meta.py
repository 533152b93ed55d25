"""Built-in `DatasetMeta` of the standard datasets (class names, thing flags, ignore label, dataset ids).

Datasets whose files carry their own categories (COCO panoptic JSON, a folder's classes file) build their meta
from those files instead; see coco_panoptic.py and semantic.folder.
"""

from __future__ import annotations

from ..structures import DatasetMeta


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.replace("\n", "|").split("|") if n.strip()]


ADE20K_150_NAMES = _names("""
wall|building|sky|floor|tree|ceiling|road|bed|windowpane|grass|cabinet|sidewalk|person|earth|door|table|mountain
plant|curtain|chair|car|water|painting|sofa|shelf|house|sea|mirror|rug|field|armchair|seat|fence|desk|rock|wardrobe
lamp|bathtub|railing|cushion|base|box|column|signboard|chest of drawers|counter|sand|sink|skyscraper|fireplace
refrigerator|grandstand|path|stairs|runway|case|pool table|pillow|screen door|stairway|river|bridge|bookcase|blind
coffee table|toilet|flower|book|hill|bench|countertop|stove|palm|kitchen island|computer|swivel chair|boat|bar
arcade machine|hovel|bus|towel|light|truck|tower|chandelier|awning|streetlight|booth|television receiver|airplane
dirt track|apparel|pole|land|bannister|escalator|ottoman|bottle|buffet|poster|stage|van|ship|fountain|conveyer belt
canopy|washer|plaything|swimming pool|stool|barrel|basket|waterfall|tent|bag|minibike|cradle|oven|ball|food|step
tank|trade name|microwave|pot|animal|bicycle|lake|dishwasher|screen|blanket|sculpture|hood|sconce|vase
traffic light|tray|ashcan|fan|pier|crt screen|plate|monitor|bulletin board|shower|radiator|glass|clock|flag
""")

# 1-based SceneParse150 ids of the 100 ADE20K panoptic thing classes (ade20k_instance_catid_mapping.txt, in
# instance-class order: instance class i+1 -> ADE20K_PANOPTIC_THING_IDS[i]).
ADE20K_PANOPTIC_THING_IDS = (
    8, 9, 11, 13, 15, 16, 19, 20, 21, 23, 24, 25, 28, 31, 32, 33, 34, 36, 37, 38, 39, 40, 42, 43, 44, 45, 46, 48, 50,
    51, 54, 56, 57, 58, 59, 63, 65, 66, 67, 68, 70, 71, 72, 73, 74, 75, 76, 77, 79, 81, 82, 83, 84, 86, 87, 88, 89,
    90, 91, 93, 94, 96, 98, 99, 103, 104, 105, 108, 109, 111, 112, 113, 116, 117, 119, 120, 121, 122, 124, 125, 126,
    127, 128, 130, 131, 133, 134, 135, 136, 137, 138, 139, 140, 143, 144, 145, 147, 148, 149, 150,
)  # fmt: skip

COCO_THING_NAMES = _names("""
person|bicycle|car|motorcycle|airplane|bus|train|truck|boat|traffic light|fire hydrant|stop sign|parking meter|bench
bird|cat|dog|horse|sheep|cow|elephant|bear|zebra|giraffe|backpack|umbrella|handbag|tie|suitcase|frisbee|skis
snowboard|sports ball|kite|baseball bat|baseball glove|skateboard|surfboard|tennis racket|bottle|wine glass|cup|fork
knife|spoon|bowl|banana|apple|sandwich|orange|broccoli|carrot|hot dog|pizza|donut|cake|chair|couch|potted plant|bed
dining table|toilet|tv|laptop|mouse|remote|keyboard|cell phone|microwave|oven|toaster|sink|refrigerator|book|clock
vase|scissors|teddy bear|hair drier|toothbrush
""")
COCO_THING_IDS = (*range(1, 12), *range(13, 26), 27, 28, *range(31, 45), *range(46, 66), 67, 70, *range(72, 83),
                  *range(84, 91))  # fmt: skip
# COCO-Stuff's 91 stuff categories, COCO ids 92..182 in order.
COCO_STUFF_NAMES = _names("""
banner|blanket|branch|bridge|building-other|bush|cabinet|cage|cardboard|carpet|ceiling-other|ceiling-tile|cloth
clothes|clouds|counter|cupboard|curtain|desk-stuff|dirt|door-stuff|fence|floor-marble|floor-other|floor-stone
floor-tile|floor-wood|flower|fog|food-other|fruit|furniture-other|grass|gravel|ground-other|hill|house|leaves|light
mat|metal|mirror-stuff|moss|mountain|mud|napkin|net|paper|pavement|pillow|plant-other|plastic|platform|playingfield
railing|railroad|river|road|rock|roof|rug|salad|sand|sea|shelf|sky-other|skyscraper|snow|solid-other|stairs|stone
straw|structural-other|table|tent|textile-other|towel|tree|vegetable|wall-brick|wall-concrete|wall-other
wall-panel|wall-stone|wall-tile|wall-wood|water-other|waterdrops|window-blind|window-other|wood
""")

CITYSCAPES_NAMES = _names("""
road|sidewalk|building|wall|fence|pole|traffic light|traffic sign|vegetation|terrain|sky|person|rider|car|truck|bus
train|motorcycle|bicycle
""")
CITYSCAPES_LABEL_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)

MAPILLARY_NAMES = _names("""
animal--bird|animal--ground-animal|construction--barrier--curb|construction--barrier--fence
construction--barrier--guard-rail|construction--barrier--other-barrier|construction--barrier--wall
construction--flat--bike-lane|construction--flat--crosswalk-plain|construction--flat--curb-cut
construction--flat--parking|construction--flat--pedestrian-area|construction--flat--rail-track
construction--flat--road|construction--flat--service-lane|construction--flat--sidewalk
construction--structure--bridge|construction--structure--building|construction--structure--tunnel|human--person
human--rider--bicyclist|human--rider--motorcyclist|human--rider--other-rider|marking--crosswalk-zebra
marking--general|nature--mountain|nature--sand|nature--sky|nature--snow|nature--terrain|nature--vegetation
nature--water|object--banner|object--bench|object--bike-rack|object--billboard|object--catch-basin
object--cctv-camera|object--fire-hydrant|object--junction-box|object--mailbox|object--manhole|object--phone-booth
object--pothole|object--street-light|object--support--pole|object--support--traffic-sign-frame
object--support--utility-pole|object--traffic-light|object--traffic-sign--back|object--traffic-sign--front
object--trash-can|object--vehicle--bicycle|object--vehicle--boat|object--vehicle--bus|object--vehicle--car
object--vehicle--caravan|object--vehicle--motorcycle|object--vehicle--on-rails|object--vehicle--other-vehicle
object--vehicle--trailer|object--vehicle--truck|object--vehicle--wheeled-slow|void--car-mount|void--ego-vehicle
""")


# COCO panoptic's 53 stuff categories (panoptic_coco_categories.json, in id order).
COCO_PANOPTIC_STUFF_NAMES = _names("""
banner|blanket|bridge|cardboard|counter|curtain|door-stuff|floor-wood|flower|fruit|gravel|house|light|mirror-stuff|net
pillow|platform|playingfield|railroad|river|road|roof|sand|sea|shelf|snow|stairs|tent|towel|wall-brick|wall-stone
wall-tile|wall-wood|water-other|window-blind|window-other|tree-merged|fence-merged|ceiling-merged|sky-other-merged
cabinet-merged|table-merged|floor-other-merged|pavement-merged|mountain-merged|grass-merged|dirt-merged|paper-merged
food-other-merged|building-other-merged|rock-merged|wall-other-merged|rug-merged
""")
COCO_PANOPTIC_STUFF_IDS = (
    92, 93, 95, 100, 107, 109, 112, 118, 119, 122, 125, 128, 130, 133, 138, 141, 144, 145, 147, 148, 149, 151, 154,
    155, 156, 159, 161, 166, 168, 171, 175, 176, 177, 178, 180, 181, *range(184, 201),
)  # fmt: skip


def _colors(text: str) -> list[tuple[int, int, int]]:
    """'rrggbb rrggbb ...' -> [(r, g, b), ...]"""
    return [tuple(bytes.fromhex(h)) for h in text.split()]


# Standard colours, in contiguous-id order: ADE20K's official SceneParse150 palette, COCO panoptic's category colours
# (panoptic_coco_categories.json), Cityscapes' train-id colours (cityscapesScripts), CamVid's (SegNet 11 classes).
ADE20K_PALETTE = _colors("""
787878 b47878 06e6e6 503232 04c803 787850 8c8c8c cc05ff e6e6e6 04fa07 e005ff ebff07 96053d 787846 08ff33 ff0652 8fff8c
ccff04 ff3307 cc4603 0066c8 3de6fa ff0633 0b66ff ff0747 ff09e0 0907e6 dcdcdc ff095c 7009ff 08ffd6 07ffe0 ffb806 0aff47
ff290a 07ffff e0ff08 6608ff ff3d06 ffc207 ff7a08 00ff14 ff0829 ff0599 0633ff eb0cff a09614 00a3ff 8c8c8c fa0a0f 14ff00
1fff00 ff1f00 ffe000 99ff00 0000ff ff4700 00ebff 00adff 1f00ff 0bc8c8 ff5200 00fff5 003dff 00ff70 00ff85 ff0000 ffa300
ff6600 c2ff00 008fff 33ff00 0052ff 00ff29 00ffad 0a00ff adff00 00ff99 ff5c00 ff00ff ff00f5 ff0066 ffad00 ff0014 ffb8b8
001fff 00ff3d 0047ff ff00cc 00ffc2 00ff52 000aff 0070ff 3300ff 00c2ff 007aff 00ffa3 ff9900 00ff0a ff7000 8fff00 5200ff
a3ff00 ffeb00 08b8aa 8500ff 00ff5c b800ff ff001f 00b8ff 00d6ff ff0070 5cff00 00e0ff 70e0ff 46b8a0 a300ff 9900ff 47ff00
ff00a3 ffcc00 ff008f 00ffeb 85ff00 ff00eb f500ff ff007a fff500 0abed4 d6ff00 00ccff 1400ff ffff00 0099ff 0029ff 00ffcc
2900ff 29ff00 ad00ff 00f5ff 4700ff 7a00ff 00ffb8 005cff b8ff00 0085ff ffd600 19c2c2 66ff00 5c00ff
""")
COCO_PANOPTIC_PALETTE = _colors("""
dc143c 770b20 00008e 0000e6 6a00e4 003c64 005064 000046 0000c0 faaa1e 64aa1e dcdc00 af74af fa001e a52a2a ff4dff 00e2fc
b6b6ff 005200 78a69d 6e4c00 ae39ff c76400 480076 ffb3f0 007d5c d10097 bcd0b6 00dcb0 ff63a4 5c0049 8581ff 4eb4ff 00e400
aefff3 2d59ff 868667 9194ae ffd0ba c5e2ff ab8601 6d3f36 cf8aff 97005f 09503d 546933 4a4169 a6c466 d0c3d2 ff6d41 008f95
b300c2 d1636a 057900 e3ffcd 93bad0 994501 035fa1 a3ff00 7700aa 00b6c7 00a578 b78258 5f2000 827287 6e8185 a64a76 db8eb9
4fd272 b25a3e 41460f 7fa773 3b696a 8e6c2d c4ac00 5f3650 804cff c93901 f6007a bfa2d0 ffff80 93d3cb 966464 a8abac 9270c6
d2aa64 5c8859 da58b8 f18100 d911ff 7c4ab5 464646 ffe4ff 9ad000 c1005c 4c5b71 ffb4c3 6a9ab0 e6968c 3c8fff 804080 5c5237
fed47c 494dae ffa062 ffffff 68546d a9a483 e1c7ff 89364a 879edf 07f6e7 6bffc8 3a2995 b7798e ff4961 6b8e23 be9999 928b8d
4682b4 86c79c d1e28c 60246c 606060 40aa40 98fb98 d0e5e4 cebaab 98a140 747000 00728f 66669c fa8dff
""")
CITYSCAPES_PALETTE = _colors("""
804080 f423e8 464646 66669c be9999 999999 faaa1e dcdc00 6b8e23 98fb98 4682b4 dc143c ff0000 00008e 000046 003c64 005064
0000e6 770b20
""")
CAMVID_NAMES = _names("sky|building|pole|road|pavement|tree|sign_symbol|fence|car|pedestrian|bicyclist")
CAMVID_PALETTE = _colors("808080 800000 c0c080 804080 3c28de 808000 c08080 404080 400080 404000 0080c0")


def ade20k_150() -> DatasetMeta:
    """ADE20K SceneParse150: 150 classes, contiguous id = raw PNG value - 1, ignore 255."""
    return DatasetMeta("ade20k", list(ADE20K_150_NAMES), dataset_ids=list(range(1, 151)), palette=ADE20K_PALETTE)


def ade20k_panoptic() -> DatasetMeta:
    """ADE20K panoptic: the 150 classes, 100 things (instance mapping) and 50 stuff; dataset id = contiguous id."""
    things = [i + 1 in ADE20K_PANOPTIC_THING_IDS for i in range(150)]  # the ids are 1-based
    return DatasetMeta("ade20k_panoptic", list(ADE20K_150_NAMES), is_thing=things, palette=ADE20K_PALETTE)


def ade20k_full(names: list[str] | None = None, dataset_ids: list[int] | None = None) -> DatasetMeta:
    """ADE20K-Full: 847 classes (generic names unless the prepared categories file gives them), ignore 65535."""
    names = names or [f"class_{i}" for i in range(847)]
    return DatasetMeta("ade20k_full", list(names), ignore_label=65535, dataset_ids=dataset_ids or [])


def coco_stuff_171() -> DatasetMeta:
    """COCO-Stuff: 80 things (COCO ids) then 91 stuff (ids 92..182), contiguous 0..170, ignore 255."""
    names = COCO_THING_NAMES + COCO_STUFF_NAMES
    ids = list(COCO_THING_IDS) + list(range(92, 183))
    return DatasetMeta("coco_stuff", names, is_thing=[i < 80 for i in range(171)], dataset_ids=ids)


def coco_panoptic_133() -> DatasetMeta:
    """COCO panoptic: 80 things then 53 stuff, contiguous 0..132 in category-id order (as detectron2 and the JSON)."""
    ids = list(COCO_THING_IDS) + list(COCO_PANOPTIC_STUFF_IDS)
    names = COCO_THING_NAMES + COCO_PANOPTIC_STUFF_NAMES
    things = [True] * 80 + [False] * 53
    return DatasetMeta("coco_panoptic", names, is_thing=things, dataset_ids=ids, palette=COCO_PANOPTIC_PALETTE)


def cityscapes_19() -> DatasetMeta:
    """Cityscapes: 19 train ids (dataset ids = the cityscapesScripts labelIds), 8 things, ignore 255."""
    things = [11 <= i <= 18 for i in range(19)]
    names, ids = list(CITYSCAPES_NAMES), list(CITYSCAPES_LABEL_IDS)
    return DatasetMeta("cityscapes", names, is_thing=things, dataset_ids=ids, palette=CITYSCAPES_PALETTE)


def mapillary_65() -> DatasetMeta:
    """Mapillary Vistas v1.2: 65 evaluated classes; label 65 (void--unlabeled) is the ignore label."""
    return DatasetMeta("mapillary", list(MAPILLARY_NAMES), ignore_label=65)


def camvid_11() -> DatasetMeta:
    """CamVid (SegNet's 11 classes; the data itself is read as a folder dataset), for its standard colours."""
    return DatasetMeta("camvid", list(CAMVID_NAMES), palette=CAMVID_PALETTE)


BUILTIN_META = {
    "ade20k": ade20k_150,
    "ade20k_panoptic": ade20k_panoptic,
    "ade20k_full": ade20k_full,
    "coco_stuff": coco_stuff_171,
    "coco_panoptic": coco_panoptic_133,
    "cityscapes": cityscapes_19,
    "mapillary": mapillary_65,
}


def builtin_meta(dataset: str, num_classes: int) -> DatasetMeta | None:
    """The built-in meta of `dataset` (a `data.format` name) if it has exactly `num_classes` classes, else None."""
    meta = BUILTIN_META[dataset]() if dataset in BUILTIN_META else None
    return meta if meta is not None and meta.num_classes == num_classes else None


def standard_palette(meta: DatasetMeta) -> list[tuple[int, int, int]] | None:
    """The standard colours of the dataset `meta`'s classes are (same class names: ADE20K-150, COCO panoptic,
    Cityscapes, CamVid), e.g. for a model directory saved with generated colours; None for other label spaces."""
    names = [n.lower().replace(" ", "_") for n in meta.class_names]
    for known in (ade20k_150(), coco_panoptic_133(), cityscapes_19(), camvid_11()):
        if names == [n.lower().replace(" ", "_") for n in known.class_names]:
            return list(known.palette)
    return None
