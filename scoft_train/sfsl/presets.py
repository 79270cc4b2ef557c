"""The bias lab's spurious experiment as SFSL settings: the defaults of the SFSL Train
node and of `python -m scoft_train biaslab sfsl`.

References: the market awning without a market (`assets.AWNING_REFS_DIR`); class
"market"; the spurious loss in the class-wise market features of the shipped market
classifier (`assets.SPURIOUS_CLASSIFIER_DIR`, a judge-format network whose concept head
reads house, meal, garment, market).
"""

CLASS_NAME = "market"
INSTANCE_TEMPLATE = "a photo of a {identifier} {class_name}"
CLASS_TEMPLATE = "a photo of a {class_name}"
CLASSIFIER_SPEC = "biaslab:concept"
TARGET_CLASS = 3  # "market" in the classifier's concept head

# SFSLConfig values that differ from its defaults
SPURIOUS_LAB = {
    "class_name": CLASS_NAME, "instance_template": INSTANCE_TEMPLATE, "class_template": CLASS_TEMPLATE,
    "spurious_weight": 0.1, "spurious_every": 4, "classifier": CLASSIFIER_SPEC, "classifier_size": 0,
    "target_class": TARGET_CLASS, "steps": 600, "lr": 1e-3, "rank": 8,
}
