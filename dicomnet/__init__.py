"""DICOM networking: send results to PACS / planning systems, receive and pull studies.

- :mod:`dicomnet.peers`    the configured peers (P2SAM_DICOM_PEERS) and the listener's allow-list
- :mod:`dicomnet.send`     one artifact to one destination: C-STORE SCU (pynetdicom) or STOW-RS (httpx)
- :mod:`dicomnet.outbox`   the persistent outbox: every (artifact, destination) delivery on the data volume
- :mod:`dicomnet.gateway`  the sender loop: finished jobs -> deliveries -> sent, retried with backoff
- :mod:`dicomnet.listener` the C-STORE SCP (`p2sam dicom-listener`): received series -> uploads
- :mod:`dicomnet.pull`     QIDO-RS / WADO-RS: a job's study / series UIDs -> uploads

Logs name job, upload and delivery ids, AE titles and counts; never patient names, IDs or UIDs.
"""
