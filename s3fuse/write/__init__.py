"""The write path: files open for writing, and how their changes reach S3.

A write lands in the file's spill file (``spill``); a file written front to back is
streamed to S3 as it is written (``streaming``); close() and fsync() save what is left
(``openfile.OpenFile.save``: a PutObject or a rebuilt multipart upload, ``save``, with
the part plan of ``parts``, through the S3 calls of ``upload``, its holes copied from
the all-zero objects of ``zeros``); a file that cannot be
saved is kept in ``lostfound``. With ``--write-back``, close() makes the file durable
in the ``journal`` (its records: ``record``) and the upload runs in the background
(``queue``). ``writeback.WriteBack`` holds every open file and is what the rest of the
file system talks to; DEVELOPMENT.md has the rules its concurrency depends on.
"""

from .openfile import OpenFile, UploadState
from .parts import check_file_size
from .upload import HeaderChanges
from .writeback import Detached, Tree, WriteBack

__all__ = ["Detached", "HeaderChanges", "OpenFile", "Tree", "UploadState", "WriteBack", "check_file_size"]
