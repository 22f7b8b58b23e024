"""Fake Cinder volume drivers for Elara's tests.

Both are Cinder's own FakeLoggingVolumeDriver (volumes exist only in Cinder's database) answering
initialize_connection with complete iSCSI details (portal 127.0.0.1:3260, iqn, lun, CHAP) as a
real iSCSI backend does; nothing listens on the portal (this machine's kernel has no iSCSI
initiator to log in with anyway). MultiPoolFakeDriver also reports the pools listed in the JSON
file $ELARA_CINDER_POOLS_FILE (re-read on every stats poll, every 3 s).
"""
import json
import os

from cinder.tests.fake_driver import FakeLoggingVolumeDriver

POOLS_FILE = os.environ.get("ELARA_CINDER_POOLS_FILE", "pools.json")


class IscsiFakeDriver(FakeLoggingVolumeDriver):
    """One pool of infinite capacity (Cinder's fake), with real-looking iSCSI connection info."""

    def initialize_connection(self, volume, connector):
        return {"driver_volume_type": "iscsi",
                "data": {"target_iqn": "iqn.2010-10.org.openstack:volume-%s" % volume.id,
                         "target_portal": "127.0.0.1:3260", "target_lun": 0,
                         "volume_id": volume.id, "access_mode": "rw",
                         "auth_method": "CHAP", "auth_username": "elara-test",
                         "auth_password": "chap-secret-%s" % volume.id[:8]}}


class MultiPoolFakeDriver(IscsiFakeDriver):
    def _update_volume_stats(self):
        with open(POOLS_FILE) as f:
            pools = json.load(f)
        self._stats = {
            "volume_backend_name": self.configuration.safe_get("volume_backend_name") or "multi",
            "vendor_name": "Elara test", "driver_version": "1.0", "storage_protocol": "iSCSI",
            "pools": [dict(p, QoS_support=False, multiattach=True) for p in pools],
        }
