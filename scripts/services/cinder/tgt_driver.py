"""A Cinder volume driver with a real data path for Elara's tests: sparse files served by tgt.

The backend `lun` of scripts/services/cinder.sh. Each volume is a sparse file
$ELARA_TGT_LUNS_DIR/volume-<id>.img of the volume's size, exported by the tgtd that
scripts/services/tgt.sh runs as its own target iqn.2010-10.org.openstack:volume-<id> with LUN 1
backed by that file, bound to every initiator, and guarded by incoming CHAP with a user and
password of its own (random, made at create). The target lives as long as the volume (made at
create, removed at delete; create_export/ensure_export make it again if tgtd lost it), and its
definition is written to $ELARA_TGT_TARGETS_DIR/<iqn>.conf (KEY=VALUE lines: tid, iqn, lun,
backing_store, chap_user, chap_password; mode 0600) so that tgt.sh re-creates it with the same tid
after a restart of tgtd. Tids are allocated from those files (the lowest one free), so a target
keeps its tid for life.

Snapshots are copies of the file ($ELARA_TGT_LUNS_DIR/snapshot-<id>.img, `cp --sparse=always
--reflink=auto`); volumes from a snapshot or a clone are copies too, grown to their size. Extend
grows the file and removes and re-adds the LUN (tgt reads a backing file's size only when the LUN
is added). initialize_connection answers as Cinder's LVM driver with the tgt target helper does.
cinder-volume runs as root here: tgtadm is called directly (no rootwrap). One pool, `lun`, whose
capacity is the file system's of the LUNs' directory (statvfs).
"""
import os

from oslo_concurrency import lockutils
from oslo_concurrency import processutils
from oslo_log import log as logging

from cinder import exception
from cinder.volume import driver
from cinder.volume import volume_utils

LOG = logging.getLogger(__name__)

LUNS_DIR = os.environ.get("ELARA_TGT_LUNS_DIR", "/var/lib/elara-tgt/luns")
TARGETS_DIR = os.environ.get("ELARA_TGT_TARGETS_DIR", "/var/lib/elara-tgt/targets")
PORTAL = os.environ.get("ELARA_TGT_PORTAL", "127.0.0.1:3260")
IQN_PREFIX = "iqn.2010-10.org.openstack:"
LUN = 1  # tgt's LUN 0 is the target's controller
GiB = 1 << 30
LOCK = "elara-tgt-targets"


class TgtdUnreachable(Exception):
    pass


def _tgtadm(*args):
    try:
        out, _err = processutils.execute("tgtadm", "--lld", "iscsi", *args)
        return out
    except processutils.ProcessExecutionError as e:
        text = "%s %s" % (e.stderr or "", e.stdout or "")
        if "can't send the request" in text or "failed to send request" in text:
            raise TgtdUnreachable(text.strip())
        raise


def _live_targets():
    """{iqn: tid} of the targets tgtd has."""
    found = {}
    for line in _tgtadm("--op", "show", "--mode", "target").splitlines():
        if line.startswith("Target ") and ": " in line:
            head, iqn = line.split(": ", 1)
            found[iqn.strip()] = int(head.split()[1])
    return found


def _accounts():
    out = _tgtadm("--op", "show", "--mode", "account")
    return {line.strip() for line in out.splitlines()[1:] if line.strip()}


def _read_def(path):
    d = {}
    try:
        with open(path) as f:
            for line in f:
                line = line.rstrip("\n")
                if "=" in line and not line.startswith("#"):
                    k, v = line.split("=", 1)
                    d[k] = v
    except FileNotFoundError:
        return None
    d["tid"] = int(d["tid"])
    d["lun"] = int(d.get("lun", LUN))
    return d


def _write_def(path, d):
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("# A target of Cinder's backend `lun` (scripts/services/cinder/tgt_driver.py);\n"
                "# scripts/services/tgt.sh start re-creates it.\n")
        for k in ("tid", "iqn", "lun", "backing_store", "chap_user", "chap_password"):
            f.write("%s=%s\n" % (k, d[k]))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _copy(src, dst, size_gb):
    processutils.execute("cp", "--sparse=always", "--reflink=auto", src, dst)
    if os.path.getsize(dst) < size_gb * GiB:
        os.truncate(dst, size_gb * GiB)


class TgtFileDriver(driver.VolumeDriver):
    """Volumes as sparse files, each its own tgt iSCSI target with CHAP."""

    VERSION = "1.0.0"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.backend_name = self.configuration.safe_get("volume_backend_name") or "lun"

    # ---- paths and definitions
    @staticmethod
    def _iqn(volume):
        return IQN_PREFIX + "volume-%s" % volume.id

    @staticmethod
    def _vol_path(volume):
        return os.path.join(LUNS_DIR, "volume-%s.img" % volume.id)

    @staticmethod
    def _snap_path(snapshot):
        return os.path.join(LUNS_DIR, "snapshot-%s.img" % snapshot.id)

    @staticmethod
    def _def_path(iqn):
        return os.path.join(TARGETS_DIR, iqn + ".conf")

    def local_path(self, volume):
        return self._vol_path(volume)

    def _defs(self):
        out = []
        for name in os.listdir(TARGETS_DIR):
            if name.endswith(".conf"):
                d = _read_def(os.path.join(TARGETS_DIR, name))
                if d:
                    out.append(d)
        return out

    def _model_update(self, d):
        return {"provider_location": "%s,%d %s %d" % (PORTAL, d["tid"], d["iqn"], d["lun"]),
                "provider_auth": "CHAP %s %s" % (d["chap_user"], d["chap_password"])}

    # ---- tgtd
    def _apply(self, d, live=None):
        """Make the target of definition d in tgtd unless it has it."""
        live = _live_targets() if live is None else live
        if live.get(d["iqn"]) == d["tid"]:
            return
        if d["iqn"] in live:
            raise exception.VolumeBackendAPIException(
                data="tgtd has %s as tid %d, its definition says %d" % (d["iqn"], live[d["iqn"]], d["tid"]))
        if d["tid"] in live.values():
            raise exception.VolumeBackendAPIException(data="tid %d of %s is taken in tgtd" % (d["tid"], d["iqn"]))
        tid = str(d["tid"])
        _tgtadm("--op", "new", "--mode", "target", "--tid", tid, "--targetname", d["iqn"])
        _tgtadm("--op", "new", "--mode", "logicalunit", "--tid", tid, "--lun", str(d["lun"]),
                "--backing-store", d["backing_store"])
        _tgtadm("--op", "bind", "--mode", "target", "--tid", tid, "--initiator-address", "ALL")
        if d["chap_user"] not in _accounts():
            _tgtadm("--op", "new", "--mode", "account", "--user", d["chap_user"], "--password", d["chap_password"])
        _tgtadm("--op", "bind", "--mode", "account", "--tid", tid, "--user", d["chap_user"])
        LOG.info("tgt target %s (tid %s) made for %s", d["iqn"], tid, d["backing_store"])

    @lockutils.synchronized(LOCK)
    def _export(self, volume):
        """The volume's definition (made on the first call: tid, CHAP) and its target in tgtd."""
        iqn = self._iqn(volume)
        path = self._def_path(iqn)
        d = _read_def(path)
        live = _live_targets()
        if d is None:
            used = {x["tid"] for x in self._defs()} | set(live.values())
            tid = 1
            while tid in used:
                tid += 1
            d = {"tid": tid, "iqn": iqn, "lun": LUN, "backing_store": self._vol_path(volume),
                 "chap_user": volume_utils.generate_username(20),
                 "chap_password": volume_utils.generate_password(16)}
            _write_def(path, d)
        self._apply(d, live)
        return d

    @lockutils.synchronized(LOCK)
    def _unexport(self, volume):
        """Remove the volume's target and CHAP account from tgtd and its definition; idempotent."""
        iqn = self._iqn(volume)
        d = _read_def(self._def_path(iqn))
        try:
            live = _live_targets()
            if iqn in live:
                _tgtadm("--op", "delete", "--mode", "target", "--tid", str(live[iqn]), "--force")
            if d and d["chap_user"] in _accounts():
                _tgtadm("--op", "delete", "--mode", "account", "--user", d["chap_user"])
        except TgtdUnreachable as e:
            # tgtd is down: it has no targets now, and without the definition it makes none again.
            LOG.warning("tgtd unreachable while removing %s (%s); removing its definition only", iqn, e)
        try:
            os.unlink(self._def_path(iqn))
        except FileNotFoundError:
            pass

    @lockutils.synchronized(LOCK)
    def _refresh_lun(self, volume):
        """Re-add LUN 1 of the volume's target so that tgtd sees the file's new size."""
        iqn = self._iqn(volume)
        d = _read_def(self._def_path(iqn))
        live = _live_targets()
        if d is None or iqn not in live:
            return
        tid = str(live[iqn])
        _tgtadm("--op", "delete", "--mode", "logicalunit", "--tid", tid, "--lun", str(d["lun"]))
        _tgtadm("--op", "new", "--mode", "logicalunit", "--tid", tid, "--lun", str(d["lun"]),
                "--backing-store", d["backing_store"])

    # ---- set-up and stats
    def do_setup(self, context):
        os.makedirs(LUNS_DIR, exist_ok=True)
        os.makedirs(TARGETS_DIR, mode=0o700, exist_ok=True)

    def check_for_setup_error(self):
        for d in (LUNS_DIR, TARGETS_DIR):
            if not os.access(d, os.W_OK):
                raise exception.VolumeBackendAPIException(data="%s is not writable" % d)
        try:
            processutils.execute("tgtadm", "--help", check_exit_code=False)
        except OSError as e:
            raise exception.VolumeBackendAPIException(data="tgtadm: %s" % e)
        try:
            _live_targets()
        except Exception as e:  # tgt.sh may start it later; each call checks again
            LOG.warning("tgtd does not answer yet: %s", e)

    def _update_volume_stats(self):
        st = os.statvfs(LUNS_DIR)
        total = st.f_blocks * st.f_frsize / GiB
        free = st.f_bavail * st.f_frsize / GiB
        provisioned = 0
        for name in os.listdir(LUNS_DIR):
            if name.endswith(".img"):
                try:
                    provisioned += os.path.getsize(os.path.join(LUNS_DIR, name))
                except FileNotFoundError:
                    pass
        pool = {
            "pool_name": self.backend_name,
            "total_capacity_gb": round(total, 2),
            "free_capacity_gb": round(free, 2),
            "provisioned_capacity_gb": round(provisioned / GiB, 2),
            "reserved_percentage": self.configuration.safe_get("reserved_percentage") or 0,
            "max_over_subscription_ratio": self.configuration.safe_get("max_over_subscription_ratio") or "20.0",
            "thin_provisioning_support": True,
            "thick_provisioning_support": False,
            "QoS_support": False,
            "multiattach": True,
            "online_extend_support": True,
            "location_info": "TgtFileDriver:%s:%s" % (self.host, LUNS_DIR),
            "backend_state": "up",
        }
        self._stats = {
            "volume_backend_name": self.backend_name,
            "vendor_name": "Elara test", "driver_version": self.VERSION, "storage_protocol": "iSCSI",
            "pools": [pool],
        }

    def get_volume_stats(self, refresh=False):
        if refresh or not self._stats:
            self._update_volume_stats()
        return self._stats

    def get_pool(self, volume):
        return self.backend_name

    # ---- volumes
    def create_volume(self, volume):
        path = self._vol_path(volume)
        with open(path, "ab"):
            pass
        if os.path.getsize(path) < volume.size * GiB:
            os.truncate(path, volume.size * GiB)
        return self._model_update(self._export(volume))

    def create_volume_from_snapshot(self, volume, snapshot):
        _copy(self._snap_path(snapshot), self._vol_path(volume), volume.size)
        return self._model_update(self._export(volume))

    def create_cloned_volume(self, volume, src_vref):
        _copy(self._vol_path(src_vref), self._vol_path(volume), volume.size)
        return self._model_update(self._export(volume))

    def delete_volume(self, volume):
        self._unexport(volume)
        try:
            os.unlink(self._vol_path(volume))
        except FileNotFoundError:
            pass

    def extend_volume(self, volume, new_size):
        path = self._vol_path(volume)
        if os.path.getsize(path) < new_size * GiB:
            os.truncate(path, new_size * GiB)
        self._refresh_lun(volume)

    def create_snapshot(self, snapshot):
        _copy(os.path.join(LUNS_DIR, "volume-%s.img" % snapshot.volume_id), self._snap_path(snapshot), 0)

    def delete_snapshot(self, snapshot):
        try:
            os.unlink(self._snap_path(snapshot))
        except FileNotFoundError:
            pass

    def revert_to_snapshot(self, context, volume, snapshot):
        # Into the same inode (tgtd holds the file open), then back to the volume's size.
        path = self._vol_path(volume)
        processutils.execute("cp", "--sparse=always", self._snap_path(snapshot), path)
        os.truncate(path, volume.size * GiB)
        self._refresh_lun(volume)

    # ---- exports and connections
    def ensure_export(self, context, volume):
        try:
            return self._model_update(self._export(volume))
        except Exception as e:  # at cinder-volume's start; a later create_export tries again
            LOG.warning("could not make the target of %s now: %s", volume.id, e)

    def create_export(self, context, volume, connector):
        return self._model_update(self._export(volume))

    def remove_export(self, context, volume):
        # The target lives as long as the volume (delete_volume removes it).
        pass

    def create_export_snapshot(self, context, snapshot, connector):
        raise NotImplementedError()

    def remove_export_snapshot(self, context, snapshot):
        raise NotImplementedError()

    def validate_connector(self, connector):
        if "initiator" not in connector:
            raise exception.InvalidConnectorException(missing="initiator")
        return True

    def initialize_connection(self, volume, connector):
        d = _read_def(self._def_path(self._iqn(volume)))
        if d is None:
            raise exception.VolumeBackendAPIException(data="volume %s has no target" % volume.id)
        data = {"target_discovered": False, "target_portal": PORTAL, "target_iqn": d["iqn"],
                "target_lun": d["lun"], "volume_id": volume.id,
                "auth_method": "CHAP", "auth_username": d["chap_user"], "auth_password": d["chap_password"],
                "encrypted": volume.encryption_key_id is not None}
        if connector.get("multipath"):
            data.update(target_portals=[PORTAL], target_iqns=[d["iqn"]], target_luns=[d["lun"]])
        admin = volume.admin_metadata if hasattr(volume, "admin_metadata") else {}
        mode = admin.get("attached_mode") or ("ro" if admin.get("readonly") == "True" else "rw")
        data["access_mode"] = mode
        return {"driver_volume_type": "iscsi", "data": data}

    def terminate_connection(self, volume, connector, **kwargs):
        pass
