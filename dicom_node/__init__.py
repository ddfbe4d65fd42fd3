"""A PACS-integrated DICOM node that enhances chest x-rays.

The data path, one module each: :mod:`~dicom_node.scp` receives,
:mod:`~dicom_node.spool` and :mod:`~dicom_node.ingest` persist,
:mod:`~dicom_node.jobs` queues, :mod:`~dicom_node.worker` processes,
:mod:`~dicom_node.dispatch` and :mod:`~dicom_node.scu` send on.
"""

__version__ = "0.1.0"

PRODUCT_NAME = "dicom-node-cxr"
"""Name written as Manufacturer in the provenance of derived objects."""

IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.8.498.10310974283831149184562141279839889246"
"""Implementation Class UID the node's AE sends in every association (fixed; made once with
pydicom's ``generate_uid`` from the product name under pydicom's organisation root)."""

IMPLEMENTATION_VERSION_NAME = f"DICOMNODE_{__version__.replace('.', '')}"[:16]
"""Implementation Version Name (at most 16 characters): product and version."""
