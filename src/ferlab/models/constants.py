"""Constants the model factory and ferlab's nets share (as ``timm/data/constants.py`` does).

Mean and std are per channel, for pixels scaled to [0, 1].
"""

# Grey FER crops average ~0.5 with a spread of ~0.25 after scaling to [0, 1] (FER2013: 0.507,
# 0.255); dataset-free constants keep a model usable on any dataset without a statistics pass.
FERLAB_MEAN = 0.5
FERLAB_STD = 0.25

# torchvision's classifiers and timm models without a pretrained config.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
