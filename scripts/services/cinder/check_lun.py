#!/usr/bin/env python3
"""The Cinder test stack's self-check of its real data path (the backend `lun`).

    python3 scripts/services/cinder/check_lun.py [DIR]

DIR is the stack's directory (default <repo>/.work/cinder); the endpoints come from the
ELARA_TEST_* environment when set, else from `scripts/services/cinder.sh status DIR`. Everything
goes through Cinder's REST API, and every claim is checked on its own, independently of Cinder
and of Elara: over iSCSI with libiscsi (iscsi-inq, iscsi-readcapacity16) and qemu's iSCSI block
driver (qemu-io, qemu-img, qemu-storage-daemon), and in the backing files, tgtd and the target
definitions directly. The steps:

 1. a 1 GiB volume of type elara-test-lun lands in elara-test@lun#lun and is a sparse 1 GiB file;
 2. an attachment (microversion 3.54) answers iSCSI connection info like Cinder's LVM/tgt driver;
 3. the LUN answers iscsi-inq and iscsi-readcapacity16 (1 GiB) with that CHAP; a wrong password and
    no CHAP are refused;
 4. bytes written over iSCSI (qemu-io) are in the backing file; bytes written into the file are
    read back over iSCSI (qemu-img convert);
 5. a snapshot, and a volume from it (its own target and CHAP) holding those bytes over iSCSI;
    a clone of the volume holding them;
 6. extend to 2 GiB while attached: 2 GiB over iSCSI;
 7. tgt stopped (tgt.sh stop) and started again while qemu-storage-daemon holds an iSCSI session
    to the LUN: the LUN is refused while down, answers again after, and the held session reads
    the same bytes again (libiscsi reconnects);
 8. everything deleted: the files, targets, CHAP accounts and definitions are gone, and Cinder
    has none of the check's volumes or snapshots left.

Exit 0 when all hold; on a failure the check still removes what it made.
"""
import json
import os
import re
import secrets
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
TGT_SH = os.path.join(ROOT, "scripts", "services", "tgt.sh")
CINDER_SH = os.path.join(ROOT, "scripts", "services", "cinder.sh")
GiB = 1 << 30
INITIATOR = "iqn.2026-12.io.elara:check"
CONNECTOR = {"initiator": INITIATOR, "ip": "127.0.0.1", "host": "check", "multipath": False}
T0 = time.monotonic()


def say(msg):
    print("[%5.1fs] %s" % (time.monotonic() - T0, msg), flush=True)


class Failed(Exception):
    pass


def ensure(cond, msg):
    if not cond:
        raise Failed(msg)


def load_env(argv):
    keys = ["ELARA_TEST_CINDER", "ELARA_TEST_CINDER_TOKEN", "ELARA_TEST_CINDER_LUN_TYPE",
            "ELARA_TEST_TGT_PORTAL", "ELARA_TEST_TGT_SERVICE", "ELARA_TEST_TGT_LUNS"]
    env = {k: os.environ[k] for k in keys if k in os.environ}
    if len(env) < len(keys):
        base = argv[1] if len(argv) > 1 else os.path.join(ROOT, ".work", "cinder")
        out = subprocess.run(["bash", CINDER_SH, "status", base], capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit("check_lun: the stack in %s is not up (start it: scripts/services/cinder.sh start %s)" % (base, base))
        for line in out.stdout.splitlines():
            k, _, v = line.partition("=")
            if k in keys and k not in env:
                env[k] = v
    return env


ENV = load_env(sys.argv)
ENDPOINT, TOKEN, LUN_TYPE = ENV["ELARA_TEST_CINDER"], ENV["ELARA_TEST_CINDER_TOKEN"], ENV["ELARA_TEST_CINDER_LUN_TYPE"]
PORTAL, TGT_DIR, LUNS = ENV["ELARA_TEST_TGT_PORTAL"], ENV["ELARA_TEST_TGT_SERVICE"], ENV["ELARA_TEST_TGT_LUNS"]


def call(method, path, body=None, version="3.54", ok=(200, 202, 204)):
    headers = {"X-Auth-Token": TOKEN, "Content-Type": "application/json", "Accept": "application/json",
               "OpenStack-API-Version": "volume " + version}
    req = urllib.request.Request(ENDPOINT + path, method=method, headers=headers,
                                 data=json.dumps(body).encode() if body is not None else None)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            code, raw = r.status, r.read()
    except urllib.error.HTTPError as e:
        code, raw = e.code, e.read()
    if code not in ok:
        raise Failed("%s %s: HTTP %d: %s" % (method, path, code, raw.decode(errors="replace")[:500]))
    return code, (json.loads(raw) if raw else None)


def wait_for(what, fn, timeout=90):
    end = time.monotonic() + timeout
    while True:
        got = fn()
        if got:
            return got
        if time.monotonic() > end:
            raise Failed("timeout (%ds) waiting for %s" % (timeout, what))
        time.sleep(0.3)


def status_of(kind, rid):
    code, v = call("GET", "/%s/%s" % (kind, rid), ok=(200, 404))
    return None if code == 404 else v[kind[:-1]]


def wait_status(kind, rid, want):
    def check():
        v = status_of(kind, rid)
        ensure(v is not None, "%s %s vanished" % (kind, rid))
        ensure(v["status"] != "error" and not v["status"].startswith("error"), "%s %s is %s" % (kind, rid, v["status"]))
        return v if v["status"] == want else None
    return wait_for("%s %s %s" % (kind[:-1], rid, want), check)


def wait_gone(kind, rid):
    return wait_for("%s %s deleted" % (kind[:-1], rid), lambda: status_of(kind, rid) is None)


def run(*cmd, check=True):
    p = subprocess.run(cmd, capture_output=True, text=True)
    if check and p.returncode != 0:
        raise Failed("%s: exit %d: %s %s" % (" ".join(cmd), p.returncode, p.stdout[-800:], p.stderr[-800:]))
    return p


def url(c, password=None):
    user = c["auth_username"]
    return "iscsi://%s%%%s@%s/%s/%d" % (user, c["auth_password"] if password is None else password,
                                         c["target_portal"], c["target_iqn"], c["target_lun"])


def capacity(c):
    out = run("iscsi-readcapacity16", "-i", INITIATOR, url(c)).stdout
    m = re.search(r"Total size:(\d+)", out)
    ensure(m, "iscsi-readcapacity16 said: %s" % out)
    return int(m.group(1))


class Qemu:
    """qemu's iSCSI block driver with a volume's CHAP (the password in a 0600 secret file)."""

    def __init__(self, tmp, c, name):
        self.secret = os.path.join(tmp, name + ".secret")
        fd = os.open(self.secret, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(c["auth_password"])
        self.node = {"driver": "iscsi", "transport": "tcp", "portal": c["target_portal"], "target": c["target_iqn"],
                     "lun": c["target_lun"], "user": c["auth_username"], "password-secret": "sec0",
                     "initiator-name": INITIATOR}
        self.obj = "secret,id=sec0,file=" + self.secret
        self.json = "json:" + json.dumps({"driver": "raw", "file": self.node})

    def write(self, offset, data_file, length):
        run("qemu-io", "--object", self.obj, "-c", "write -q -s %s %d %d" % (data_file, offset, length), self.json)

    def read(self, offset, length, out_file):
        return read_range(self.node, offset, length, out_file, ["--object", self.obj])


def read_range(node, offset, length, out_file, extra=()):
    """Bytes [offset, offset+length) of the block node `node`, through qemu-img convert of a raw
    window onto it (the raw driver's offset and size)."""
    window = {"driver": "raw", "offset": offset, "size": length, "file": node}
    run("qemu-img", "convert", *extra, "-O", "raw", "json:" + json.dumps(window), out_file)
    with open(out_file, "rb") as f:
        return f.read()


def file_bytes(path, offset, length):
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


def tgt_tids():
    """{iqn: tid} of tgtd's targets."""
    out = run("tgtadm", "--lld", "iscsi", "--op", "show", "--mode", "target").stdout
    return {iqn: int(tid) for tid, iqn in re.findall(r"^Target (\d+): (\S+)$", out, re.M)}


def tgt_targets():
    return set(tgt_tids())


def tgt_accounts():
    out = run("tgtadm", "--lld", "iscsi", "--op", "show", "--mode", "account").stdout
    return {line.strip() for line in out.splitlines()[1:] if line.strip()}


def attach(vid):
    _, v = call("POST", "/attachments", {"attachment": {"volume_uuid": vid, "connector": CONNECTOR, "mode": "rw"}})
    att = v["attachment"]
    call("POST", "/attachments/%s/action" % att["id"], {"os-complete": {}})
    info = att["connection_info"]
    return att["id"], info.get("data", info), info


def main():
    made = {"volumes": [], "snapshots": [], "attachments": []}
    tmp = tempfile.mkdtemp(prefix="check-lun-")
    tag = "check-lun-" + secrets.token_hex(4)
    qsd = None
    try:
        # 1. A volume of the lun type.
        _, v = call("POST", "/volumes", {"volume": {"size": 1, "name": tag + "-v1", "volume_type": LUN_TYPE}})
        v1 = v["volume"]["id"]
        made["volumes"].append(v1)
        vol = wait_status("volumes", v1, "available")
        ensure(vol["os-vol-host-attr:host"] == "elara-test@lun#lun", "v1 landed in %s" % vol["os-vol-host-attr:host"])
        f1 = os.path.join(LUNS, "volume-%s.img" % v1)
        st = os.stat(f1)
        ensure(st.st_size == GiB and st.st_blocks * 512 < 16 << 20, "backing file %s: size %d, %d blocks" % (f1, st.st_size, st.st_blocks))
        say("ok 1: volume %s available in elara-test@lun#lun; %s is sparse, %d bytes" % (v1, f1, st.st_size))

        # 2. Attach: the connection info.
        a1, c1, raw = attach(v1)
        made["attachments"].append(a1)
        iqn1 = "iqn.2010-10.org.openstack:volume-%s" % v1
        ensure(raw["driver_volume_type"] == "iscsi", "driver_volume_type: %s" % raw)
        want = {"target_discovered": False, "target_portal": PORTAL, "target_iqn": iqn1, "target_lun": 1,
                "volume_id": v1, "auth_method": "CHAP", "access_mode": "rw"}
        for k, w in want.items():
            ensure(c1.get(k) == w, "connection info %s = %r, want %r (%s)" % (k, c1.get(k), w, c1))
        ensure(c1.get("auth_username") and c1.get("auth_password"), "no CHAP credentials: %s" % c1)
        ensure(wait_status("volumes", v1, "in-use"), "v1 not in-use")
        shown = {k: ("***" if k == "auth_password" else val) for k, val in c1.items()}
        say("ok 2: attachment %s: %s" % (a1, json.dumps(shown, sort_keys=True)))

        # 3. The LUN over iSCSI, CHAP enforced.
        inq = run("iscsi-inq", "-i", INITIATOR, url(c1)).stdout
        ensure("DIRECT_ACCESS" in inq and "IET" in inq, "iscsi-inq: %s" % inq)
        ensure(capacity(c1) == GiB, "capacity over iSCSI %d" % capacity(c1))
        bad = run("iscsi-inq", "-i", INITIATOR, url(c1, "not-the-password"), check=False)
        ensure(bad.returncode != 0 and "Authentication failure" in bad.stdout + bad.stderr,
               "a wrong CHAP password was not refused: exit %d %s %s" % (bad.returncode, bad.stdout, bad.stderr))
        anon = run("iscsi-inq", "-i", INITIATOR, "iscsi://%s/%s/1" % (PORTAL, iqn1), check=False)
        ensure(anon.returncode != 0, "a login without CHAP was accepted")
        say("ok 3: iscsi-inq answers (DIRECT_ACCESS, IET), iscsi-readcapacity16 = %d; wrong password and no CHAP refused" % GiB)

        # 4. Bytes both ways.
        q1 = Qemu(tmp, c1, "v1")
        data = secrets.token_bytes(64 << 10)
        with open(os.path.join(tmp, "data"), "wb") as f:
            f.write(data)
        off = 5 * (1 << 20) + (64 << 10)
        q1.write(off, os.path.join(tmp, "data"), len(data))
        ensure(file_bytes(f1, off, len(data)) == data, "the backing file does not hold what qemu-io wrote over iSCSI")
        back = secrets.token_bytes(64 << 10)
        off2 = 700 * (1 << 20)
        with open(f1, "r+b") as f:
            f.seek(off2)
            f.write(back)
            f.flush()
            os.fsync(f.fileno())
        ensure(q1.read(off2, len(back), os.path.join(tmp, "read")) == back, "iSCSI does not read what the backing file holds")
        say("ok 4: 64 KiB written over iSCSI (qemu-io, driver=iscsi) are in the backing file at %d; "
            "64 KiB written into the file are read over iSCSI (qemu-img convert) at %d" % (off, off2))

        # 5. Snapshot and a volume from it.
        _, s = call("POST", "/snapshots", {"snapshot": {"volume_id": v1, "name": tag + "-s1", "force": True}})
        s1 = s["snapshot"]["id"]
        made["snapshots"].append(s1)
        wait_status("snapshots", s1, "available")
        sf = os.path.join(LUNS, "snapshot-%s.img" % s1)
        ensure(file_bytes(sf, off, len(data)) == data, "the snapshot file %s lacks the bytes" % sf)
        _, v = call("POST", "/volumes", {"volume": {"size": 1, "name": tag + "-v2", "snapshot_id": s1, "volume_type": LUN_TYPE}})
        v2 = v["volume"]["id"]
        made["volumes"].append(v2)
        wait_status("volumes", v2, "available")
        a2, c2, _ = attach(v2)
        made["attachments"].append(a2)
        ensure(c2["target_iqn"] == "iqn.2010-10.org.openstack:volume-%s" % v2, "v2's iqn: %s" % c2["target_iqn"])
        ensure(c2["auth_username"] != c1["auth_username"] and c2["auth_password"] != c1["auth_password"], "v2 shares v1's CHAP")
        q2 = Qemu(tmp, c2, "v2")
        ensure(q2.read(off, len(data), os.path.join(tmp, "read2")) == data, "v2 (from the snapshot) lacks the bytes over iSCSI")
        ensure(q2.read(off2, len(back), os.path.join(tmp, "read3")) == back, "v2 lacks the file-written bytes over iSCSI")
        cross = dict(c2, auth_username=c1["auth_username"], auth_password=c1["auth_password"])
        ensure(run("iscsi-inq", "-i", INITIATOR, url(cross), check=False).returncode != 0, "v1's CHAP opens v2's target")
        _, v = call("POST", "/volumes", {"volume": {"size": 1, "name": tag + "-v3", "source_volid": v1, "volume_type": LUN_TYPE}})
        v3 = v["volume"]["id"]
        made["volumes"].append(v3)
        wait_status("volumes", v3, "available")
        f3 = os.path.join(LUNS, "volume-%s.img" % v3)
        ensure(file_bytes(f3, off, len(data)) == data and os.path.getsize(f3) == GiB, "the clone %s lacks the bytes" % f3)
        ensure("iqn.2010-10.org.openstack:volume-%s" % v3 in tgt_targets(), "the clone has no target")
        say("ok 5: snapshot %s (%s) and volume %s from it hold the bytes (over iSCSI, its own target and CHAP; v1's CHAP "
            "refused there); the clone %s of v1 too (its file, its target)" % (s1, os.path.basename(sf), v2, v3))

        # 6. Extend while attached (3.42+): the new size over iSCSI.
        call("POST", "/volumes/%s/action" % v1, {"os-extend": {"new_size": 2}})
        wait_for("v1 2 GiB", lambda: (status_of("volumes", v1) or {}).get("size") == 2
                 and status_of("volumes", v1)["status"] == "in-use", 60)
        ensure(os.path.getsize(f1) == 2 * GiB, "backing file is %d bytes" % os.path.getsize(f1))
        ensure(capacity(c1) == 2 * GiB, "capacity over iSCSI after extend: %d" % capacity(c1))
        ensure(q1.read(off, len(data), os.path.join(tmp, "read4")) == data, "the bytes are gone after extend")
        say("ok 6: extended to 2 GiB while attached: iscsi-readcapacity16 = %d, the bytes still there" % (2 * GiB))

        # 7. tgt stopped and started under a held session.
        sock = os.path.join(tmp, "nbd.sock")
        blockdev = dict(q1.node, **{"node-name": "lun"})
        qsd = subprocess.Popen(["qemu-storage-daemon", "--object", q1.obj, "--blockdev", json.dumps(blockdev),
                                "--nbd-server", "addr.type=unix,addr.path=" + sock,
                                "--export", "type=nbd,id=e0,node-name=lun,name=lun,writable=on"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for("qemu-storage-daemon's NBD socket", lambda: os.path.exists(sock) or qsd.poll() is not None, 20)
        if qsd.poll() is not None:
            raise Failed("qemu-storage-daemon exited: %s" % qsd.stdout.read().decode(errors="replace"))

        nbd = {"driver": "nbd", "server": {"type": "unix", "path": sock}, "export": "lun"}

        def nbd_read(offset, length):
            return read_range(nbd, offset, length, os.path.join(tmp, "nbd-read"))
        ensure(nbd_read(off, len(data)) == data, "the held session does not read the bytes")
        tids = {k: v for k, v in tgt_tids().items() if k in (iqn1, c2["target_iqn"])}
        t = time.monotonic()
        run("bash", TGT_SH, "stop", TGT_DIR)
        stopped = time.monotonic() - t
        down = run("iscsi-inq", "-i", INITIATOR, url(c1), check=False)
        ensure(down.returncode != 0, "the LUN answers with tgt stopped")
        ensure(run("tgtadm", "--lld", "iscsi", "--op", "show", "--mode", "system", check=False).returncode != 0,
               "tgtd still answers after tgt.sh stop")
        t = time.monotonic()
        env = run("bash", TGT_SH, "start", TGT_DIR).stdout
        started = time.monotonic() - t
        ensure("ELARA_TEST_TGT_PORTAL=" + PORTAL in env, "tgt.sh start printed: %s" % env)
        again = {k: v for k, v in tgt_tids().items() if k in tids}
        ensure(again == tids, "targets not re-created with their tids: before %s, after %s" % (tids, again))
        ensure(capacity(c1) == 2 * GiB, "capacity after the tgt restart: %d" % capacity(c1))
        ensure(q1.read(off, len(data), os.path.join(tmp, "read5")) == data, "a new session reads other bytes after the restart")
        ensure(nbd_read(off, len(data)) == data, "the held session does not read the bytes after the restart")
        ensure(nbd_read(off2, len(back)) == back, "the held session does not read the file-written bytes after the restart")
        ensure(qsd.poll() is None, "qemu-storage-daemon died across the tgt restart")
        say("ok 7: tgt.sh stop (%.2fs): the LUN is refused; tgt.sh start (%.2fs): both targets back with the same "
            "iqn, tid (%s) and CHAP, 2 GiB, the bytes read by a new session and by qemu-storage-daemon's held one"
            % (stopped, started, "/".join(str(tids[k]) for k in (iqn1, c2["target_iqn"]))))
        qsd.terminate()
        qsd.wait(10)
        qsd = None

        # 8. Delete everything.
        cleanup(made)
        defs = os.path.join(TGT_DIR, "targets")
        iqns = {"iqn.2010-10.org.openstack:volume-%s" % x for x in (v1, v2, v3)}
        left = [p for p in [f1, sf, f3, os.path.join(LUNS, "volume-%s.img" % v2)] + [os.path.join(defs, i + ".conf") for i in iqns]
                if os.path.exists(p)]
        ensure(not left, "files left: %s" % left)
        ensure(not (iqns & tgt_targets()), "targets left: %s" % tgt_targets())
        ensure(not ({c1["auth_username"], c2["auth_username"]} & tgt_accounts()), "CHAP accounts left: %s" % tgt_accounts())
        _, all_vs = call("GET", "/volumes/detail?all_tenants=1")
        mine = [x["id"] for x in all_vs["volumes"] if x["name"].startswith(tag)]
        _, snaps = call("GET", "/snapshots/detail?all_tenants=1")
        ensure(not mine and not [x for x in snaps["snapshots"] if (x.get("name") or "").startswith(tag)],
               "Cinder still has: %s" % mine)
        on_lun = [x["id"] for x in all_vs["volumes"] if (x.get("os-vol-host-attr:host") or "").startswith("elara-test@lun")]
        say("ok 8: deleted: no file, target, CHAP account or definition left; Cinder has none of the check's volumes "
            "or snapshots (volumes left on the lun backend by others: %d)" % len(on_lun))
        say("check_lun: all good")
        return 0
    except Failed as e:
        say("FAILED: %s" % e)
        return 1
    finally:
        if qsd is not None:
            qsd.kill()
            qsd.wait()
        try:
            cleanup(made)
        except Exception as e:  # noqa: BLE001 (best effort after a failure)
            say("cleanup: %s" % e)
        subprocess.run(["rm", "-rf", tmp])


def cleanup(made):
    for a in made["attachments"]:
        call("DELETE", "/attachments/%s" % a, ok=(200, 202, 204, 404))
    made["attachments"].clear()
    for vid in made["volumes"]:
        if status_of("volumes", vid):
            wait_for("volume %s detached" % vid, lambda: status_of("volumes", vid)["status"] in ("available", "error", "error_extending"), 60)
    # Volumes made from a snapshot first, then the snapshots, then the rest.
    for vid in made["volumes"][1:]:
        call("DELETE", "/volumes/%s" % vid, ok=(202, 404))
        wait_gone("volumes", vid)
    for sid in made["snapshots"]:
        call("DELETE", "/snapshots/%s" % sid, ok=(202, 404))
        wait_gone("snapshots", sid)
    for vid in made["volumes"][:1]:
        call("DELETE", "/volumes/%s" % vid, ok=(202, 404))
        wait_gone("volumes", vid)
    made["volumes"].clear()
    made["snapshots"].clear()


if __name__ == "__main__":
    sys.exit(main())
