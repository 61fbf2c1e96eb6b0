"""DICOM networking: send results to PACS / planning systems, receive and pull studies.

- :mod:`dicomnet.peers`    the configured peers (P2SAM_DICOM_PEERS) and the listener's allow-list
- :mod:`dicomnet.send`     one artifact to one destination: C-STORE SCU (pynetdicom) or STOW-RS (httpx)
- :mod:`dicomnet.outbox`   the persistent outbox: every (artifact, destination) delivery on the data volume
- :mod:`dicomnet.gateway`  the sender loop: finished jobs -> deliveries -> sent, retried with backoff
- :mod:`dicomnet.listener` the C-STORE SCP (`p2sam dicom-listener`): received series -> uploads
- :mod:`dicomnet.pacs`     query / retrieve from a PACS: QIDO-RS + WADO-RS (httpx) or C-FIND + C-GET (pynetdicom)
- :mod:`dicomnet.pull`     a job's inputs named by study / series UIDs -> pulled into uploads before it runs

Logs name job, upload and delivery ids, AE titles and counts; never patient names, IDs or UIDs.
"""
