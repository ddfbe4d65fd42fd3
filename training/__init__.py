"""Training package of the chest x-ray enhancement node (installed with the ``train`` extra).

Builds a pix2pix generator from archived image pairs, exports it to ONNX with
the metadata the node checks, and evaluates it honestly on held-out patients.
The node (:mod:`dicom_node`) never imports this package or torch.
"""
