"""Files shipped inside the package: the COCO panoptic category table and a few public-domain / CC0 photos
(listed by :func:`rapsam_edge.data.locate.embedded_images`)."""
