"""A PACS-integrated DICOM node that enhances chest x-rays.

The data path, one module each: :mod:`~dicom_node.scp` receives,
:mod:`~dicom_node.spool` and :mod:`~dicom_node.ingest` persist,
:mod:`~dicom_node.jobs` queues, :mod:`~dicom_node.worker` processes,
:mod:`~dicom_node.dispatch` and :mod:`~dicom_node.scu` send on.
"""

__version__ = "0.1.0"

PRODUCT_NAME = "dicom-node-cxr"
"""Name written as Manufacturer in the provenance of derived objects."""
