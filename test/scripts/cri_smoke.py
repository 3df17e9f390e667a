#!/usr/bin/env python3
"""CRI smoke test: drives a containerd's CRI plugin the way the kubelet does.

Against the CRI socket given with --socket it runs, and checks, in order:

  Version, Status (RuntimeReady and NetworkReady must be true),
  ImageStatus of the container image (and of --sandbox-image, if given), so
  that a missing local image shows up as such and not as a failed pull,
  RunPodSandbox, PodSandboxStatus (pod IP), CreateContainer, StartContainer,
  ContainerStatus, the container's CRI log file (`TIMESTAMP STREAM TAG line`),
  optionally a TCP connection from the host to the pod IP (--tcp-port),
  StopContainer, ContainerStatus (exited), RemoveContainer, StopPodSandbox,
  RemovePodSandbox, and finally that nothing of the pod is left: no sandbox in
  ListPodSandbox, no network namespace file, no shim process naming the pod.

Whatever fails, the pod is stopped and removed before exiting (unless --keep,
which leaves it running after the checks). `--remove-all` only stops and removes
every pod on the socket: a teardown step before stopping a test containerd.
The closing line is `N passed, N failed`; the exit status is 0 only if every
check passed. The pod uses its own network namespace (CNI must be configured).

Python setup (once; the generated module is cached in --proto-out):

    python3 -m venv /tmp/crivenv
    /tmp/crivenv/bin/pip install grpcio grpcio-tools

The CRI protocol (runtime.v1) is compiled on first use from the k8s-cri
crate's proto in the cargo registry; by hand that is:

    mkdir -p /tmp/cri-py
    cp ~/.cargo/registry/src/*/k8s-cri-0.11.0/proto/v1.proto /tmp/cri-py/
    /tmp/crivenv/bin/python -m grpc_tools.protoc -I/tmp/cri-py \\
        --python_out=/tmp/cri-py --grpc_python_out=/tmp/cri-py /tmp/cri-py/v1.proto

Example (a private containerd whose CRI sandbox image and the container image
were imported into namespace k8s.io; see test/scripts/cri-configs.md):

    /tmp/crivenv/bin/python test/scripts/cri_smoke.py --socket /tmp/wcri.X/c.sock \\
        --image localhost/wasmcell/hello:1 --sandbox-image localhost/wasmcell/pause:1 \\
        --expect-log 'hello from' --tcp-port 8080

For the wasmcell handler, add `--handler wasmtime` and give a Wasm image; leave
out --tcp-port unless the component listens.
"""

import argparse
import glob
import importlib
import os
import shutil
import socket
import sys
import tempfile
import time
import uuid


def load_cri(proto, out):
    """Import the generated runtime.v1 modules, compiling the proto if needed."""
    name = os.path.splitext(os.path.basename(proto))[0] if proto else "v1"
    if not os.path.exists(os.path.join(out, name + "_pb2_grpc.py")):
        if not proto or not os.path.exists(proto):
            sys.exit("no CRI proto found: pass --proto PATH/v1.proto")
        from grpc_tools import protoc  # pip install grpcio-tools
        os.makedirs(out, exist_ok=True)
        src = os.path.join(out, os.path.basename(proto))
        with open(proto, "rb") as f, open(src, "wb") as g:
            g.write(f.read())
        rc = protoc.main(["protoc", "-I" + out, "--python_out=" + out,
                          "--grpc_python_out=" + out, src])
        if rc != 0:
            sys.exit("protoc failed on " + src)
    sys.path.insert(0, out)
    return importlib.import_module(name + "_pb2"), importlib.import_module(name + "_pb2_grpc")


def default_proto():
    hits = sorted(glob.glob(os.path.expanduser(
        "~/.cargo/registry/src/*/k8s-cri-*/proto/v1.proto")))
    return hits[-1] if hits else ""


class Smoke:
    def __init__(self, args, pb, pbg):
        import grpc
        self.a, self.pb = args, pb
        self.chan = grpc.insecure_channel("unix://" + args.socket)
        self.rt = pbg.RuntimeServiceStub(self.chan)
        self.img = pbg.ImageServiceStub(self.chan)
        self.passed = self.failed = 0
        self.pod = self.ctr = None
        self.netns = None
        self.logdir = args.log_dir or tempfile.mkdtemp(prefix="cri-smoke.")

    # -- reporting ---------------------------------------------------------
    def ok(self, what, detail=""):
        self.passed += 1
        print("ok    %-18s %s" % (what, detail), flush=True)

    def fail(self, what, detail):
        self.failed += 1
        print("FAIL  %-18s %s" % (what, detail), flush=True)

    def call(self, what, fn, req):
        """One RPC; a gRPC error counts as a failed check and returns None."""
        try:
            return fn(req, timeout=self.a.timeout)
        except Exception as e:  # grpc.RpcError carries the daemon's message
            detail = e.details() if hasattr(e, "details") else str(e)
            self.fail(what, detail)
            return None

    # -- steps -------------------------------------------------------------
    def version_and_status(self):
        pb = self.pb
        v = self.call("Version", self.rt.Version, pb.VersionRequest(version="v1"))
        if v:
            self.ok("Version", "%s %s (CRI %s)" % (v.runtime_name, v.runtime_version,
                                                   v.runtime_api_version))
        s = self.call("Status", self.rt.Status, pb.StatusRequest())
        if s:
            conds = {c.type: c for c in s.status.conditions}
            for t in ("RuntimeReady", "NetworkReady"):
                c = conds.get(t)
                if c and c.status:
                    self.ok("Status", t)
                else:
                    self.fail("Status", "%s false: %s %s" % (
                        t, c.reason if c else "", c.message if c else "(absent)"))
        return bool(v and s)

    def image_present(self, ref):
        pb = self.pb
        r = self.call("ImageStatus", self.img.ImageStatus,
                      pb.ImageStatusRequest(image=pb.ImageSpec(image=ref)))
        if r is None:
            return False
        if not r.image.id:
            self.fail("ImageStatus", "%s is unknown to CRI: not imported into namespace "
                      "k8s.io (`ctr -n k8s.io images import`), or the image is an index "
                      "with no manifest for the host platform" % ref)
            return False
        self.ok("ImageStatus", "%s %s" % (ref, r.image.id[:19]))
        return True

    def run_pod(self):
        pb = self.pb
        uid = uuid.uuid4().hex
        self.sandbox_config = pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(name="cri-smoke", uid=uid,
                                           namespace="default", attempt=0),
            hostname="cri-smoke",
            log_directory=self.logdir,
            labels={"app": "cri-smoke"},
            linux=pb.LinuxPodSandboxConfig(
                security_context=pb.LinuxSandboxSecurityContext(
                    namespace_options=pb.NamespaceOption(
                        network=pb.POD, pid=pb.CONTAINER, ipc=pb.POD))))
        r = self.call("RunPodSandbox", self.rt.RunPodSandbox, pb.RunPodSandboxRequest(
            config=self.sandbox_config, runtime_handler=self.a.handler))
        if r is None:
            return False
        self.pod = r.pod_sandbox_id
        self.ok("RunPodSandbox", "%s (handler %r)" % (self.pod[:13], self.a.handler))
        st = self.call("PodSandboxStatus", self.rt.PodSandboxStatus,
                       pb.PodSandboxStatusRequest(pod_sandbox_id=self.pod, verbose=True))
        if st is None:
            return False
        self.ip = st.status.network.ip
        self.netns = netns_from_info(st.info)
        if st.status.state == pb.SANDBOX_READY and self.ip:
            self.ok("PodSandboxStatus", "READY ip=%s netns=%s" % (self.ip, self.netns))
        else:
            self.fail("PodSandboxStatus", "state=%s ip=%r" % (st.status.state, self.ip))
            return False
        return True

    def run_container(self):
        pb = self.pb
        cfg = pb.ContainerConfig(
            metadata=pb.ContainerMetadata(name="main", attempt=0),
            image=pb.ImageSpec(image=self.a.image),
            command=self.a.command, args=self.a.args,
            log_path="main.log")
        r = self.call("CreateContainer", self.rt.CreateContainer, pb.CreateContainerRequest(
            pod_sandbox_id=self.pod, config=cfg, sandbox_config=self.sandbox_config))
        if r is None:
            return False
        self.ctr = r.container_id
        self.ok("CreateContainer", self.ctr[:13])
        if self.call("StartContainer", self.rt.StartContainer,
                     pb.StartContainerRequest(container_id=self.ctr)) is None:
            return False
        self.ok("StartContainer")
        st = self.wait_state((pb.CONTAINER_RUNNING, pb.CONTAINER_EXITED), 10)
        if st is None:
            return False
        if st.state == pb.CONTAINER_RUNNING or (st.state == pb.CONTAINER_EXITED
                                                 and st.exit_code == 0):
            self.ok("ContainerStatus", "%s exit=%d" % (pb.ContainerState.Name(st.state),
                                                       st.exit_code))
        else:
            self.fail("ContainerStatus", "%s exit=%d reason=%s message=%s" % (
                pb.ContainerState.Name(st.state), st.exit_code, st.reason, st.message))
        self.log_path = st.log_path
        return True

    def wait_state(self, states, secs):
        pb = self.pb
        end = time.time() + secs
        while True:
            r = self.call("ContainerStatus", self.rt.ContainerStatus,
                          pb.ContainerStatusRequest(container_id=self.ctr))
            if r is None:
                return None
            if r.status.state in states or time.time() > end:
                return r.status
            time.sleep(0.2)

    def check_log(self):
        """CRI log lines are `RFC3339NANO STREAM P|F text`."""
        path, want = self.log_path, self.a.expect_log
        end = time.time() + 10
        lines = []
        while time.time() < end:
            try:
                with open(path) as f:
                    lines = f.read().splitlines()
            except FileNotFoundError:
                lines = []
            if not want or any(want in l for l in lines):
                break
            time.sleep(0.2)
        bad = [l for l in lines if len(l.split(" ", 3)) < 4
               or l.split(" ", 3)[1] not in ("stdout", "stderr")
               or l.split(" ", 3)[2] not in ("P", "F")]
        if bad:
            self.fail("log", "not in CRI format: %r" % bad[0])
        elif want and not any(want in l for l in lines):
            self.fail("log", "%r not in %s (%d lines: %r)" % (want, path, len(lines), lines[:5]))
        else:
            self.ok("log", "%s: %d lines, first %r" % (path, len(lines), lines[0] if lines else ""))

    def check_tcp(self):
        port = self.a.tcp_port
        end = time.time() + 10
        err = None
        while time.time() < end:
            try:
                with socket.create_connection((self.ip, port), timeout=2) as s:
                    data = s.recv(100)
                self.ok("tcp", "%s:%d answered %r" % (self.ip, port, data))
                return
            except OSError as e:
                err = e
                time.sleep(0.3)
        self.fail("tcp", "%s:%d: %s" % (self.ip, port, err))

    def stop_container(self):
        pb = self.pb
        if self.call("StopContainer", self.rt.StopContainer, pb.StopContainerRequest(
                container_id=self.ctr, timeout=self.a.stop_timeout)) is None:
            return
        st = self.wait_state((pb.CONTAINER_EXITED,), 5)
        if st and st.state == pb.CONTAINER_EXITED:
            self.ok("StopContainer", "exited %d (%s)" % (st.exit_code, st.reason))
        elif st:
            self.fail("StopContainer", "still %s" % pb.ContainerState.Name(st.state))
        if self.call("RemoveContainer", self.rt.RemoveContainer,
                     pb.RemoveContainerRequest(container_id=self.ctr)) is not None:
            self.ok("RemoveContainer")
        self.ctr = None

    def remove_pod(self):
        pb = self.pb
        if self.call("StopPodSandbox", self.rt.StopPodSandbox,
                     pb.StopPodSandboxRequest(pod_sandbox_id=self.pod)) is not None:
            self.ok("StopPodSandbox")
        if self.call("RemovePodSandbox", self.rt.RemovePodSandbox,
                     pb.RemovePodSandboxRequest(pod_sandbox_id=self.pod)) is not None:
            self.ok("RemovePodSandbox")
        pod, self.pod = self.pod, None
        r = self.call("ListPodSandbox", self.rt.ListPodSandbox, pb.ListPodSandboxRequest())
        if r is not None:
            left = [p.id for p in r.items if p.id == pod]
            (self.fail if left else self.ok)("ListPodSandbox", "pod %s" % (
                "still listed" if left else "gone"))
        if self.netns:
            (self.fail if os.path.exists(self.netns) else self.ok)(
                "netns", "%s %s" % (self.netns, "left behind" if os.path.exists(
                    self.netns) else "removed"))
        end = time.time() + 5  # a shim exits shortly after its last task is deleted
        shims = shims_naming(pod)
        while shims and time.time() < end:
            time.sleep(0.2)
            shims = shims_naming(pod)
        (self.fail if shims else self.ok)("shim", "left: %s" % shims if shims
                                          else "no process names the pod")

    def cleanup(self):
        """Best effort, after a failure: leave no pod behind."""
        pb = self.pb
        try:
            if self.ctr:
                self.rt.StopContainer(pb.StopContainerRequest(container_id=self.ctr, timeout=0),
                                      timeout=self.a.timeout)
                self.rt.RemoveContainer(pb.RemoveContainerRequest(container_id=self.ctr),
                                        timeout=self.a.timeout)
        except Exception as e:
            print("cleanup: container: %s" % e, file=sys.stderr)
        try:
            if self.pod:
                self.rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=self.pod),
                                       timeout=self.a.timeout)
                self.rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=self.pod),
                                         timeout=self.a.timeout)
        except Exception as e:
            print("cleanup: pod: %s" % e, file=sys.stderr)

    def remove_all(self):
        """Stop and remove every pod sandbox on this CRI socket (for teardown)."""
        pb = self.pb
        r = self.call("ListPodSandbox", self.rt.ListPodSandbox, pb.ListPodSandboxRequest())
        for p in (r.items if r else []):
            for what, fn, req in (
                    ("StopPodSandbox", self.rt.StopPodSandbox,
                     pb.StopPodSandboxRequest(pod_sandbox_id=p.id)),
                    ("RemovePodSandbox", self.rt.RemovePodSandbox,
                     pb.RemovePodSandboxRequest(pod_sandbox_id=p.id))):
                if self.call(what, fn, req) is not None:
                    self.ok(what, "%s %s" % (p.id[:13], p.metadata.name))
        self.chan.close()

    def run(self):
        try:
            if not self.version_and_status():
                return
            images = [self.a.image] + ([self.a.sandbox_image] if self.a.sandbox_image else [])
            if not all([self.image_present(i) for i in images]):
                return
            if not self.run_pod():
                return
            if self.run_container():
                self.check_log()
                if self.a.tcp_port:
                    self.check_tcp()
                if self.a.keep:
                    print("kept: pod %s container %s" % (self.pod, self.ctr))
                    self.pod = self.ctr = None
                    return
                self.stop_container()
            self.remove_pod()
        finally:
            self.cleanup()
            self.chan.close()


def netns_from_info(info):
    """The pod's network namespace path, from PodSandboxStatus's verbose info."""
    import json
    try:
        spec = json.loads(info.get("info", "{}")).get("runtimeSpec", {})
        for ns in spec.get("linux", {}).get("namespaces", []):
            if ns.get("type") == "network":
                return ns.get("path")
    except ValueError:
        pass
    return None


def shims_naming(pod_id):
    """PIDs of live processes whose command line names the pod sandbox id."""
    pids = []
    for d in glob.glob("/proc/[0-9]*"):
        try:
            with open(d + "/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")
            with open(d + "/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and pod_id.encode() in cmd:
            pids.append(int(os.path.basename(d)))
    return pids


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--socket", required=True, help="containerd's gRPC socket (CRI)")
    p.add_argument("--image", help="container image, already in k8s.io (required "
                   "unless --remove-all)")
    p.add_argument("--sandbox-image", default="",
                   help="the CRI sandbox_image, checked to be present locally")
    p.add_argument("--handler", default="", help="runtime handler ('' = default)")
    p.add_argument("--command", nargs="*", default=[], help="overrides the entrypoint")
    p.add_argument("--args", nargs="*", default=[], help="overrides the image's cmd")
    p.add_argument("--expect-log", default="", help="text the container's log must contain")
    p.add_argument("--tcp-port", type=int, default=0,
                   help="connect from the host to POD_IP:PORT and read its greeting")
    p.add_argument("--stop-timeout", type=int, default=5, help="StopContainer grace (s)")
    p.add_argument("--timeout", type=float, default=60, help="per-RPC timeout (s)")
    p.add_argument("--remove-all", action="store_true",
                   help="only stop and remove every pod sandbox on the socket (teardown)")
    p.add_argument("--keep", action="store_true",
                   help="leave the pod running after the checks (prints its ids)")
    p.add_argument("--log-dir", default="", help="pod log directory (default: a temp dir)")
    p.add_argument("--proto", default=default_proto(), help="CRI runtime.v1 proto")
    p.add_argument("--proto-out", default="/tmp/cri-py", help="generated Python modules")
    a = p.parse_args()
    if not a.image and not a.remove_all:
        p.error("--image is required")
    pb, pbg = load_cri(a.proto, a.proto_out)
    s = Smoke(a, pb, pbg)
    s.remove_all() if a.remove_all else s.run()
    if not a.log_dir and not a.keep and s.failed == 0:
        shutil.rmtree(s.logdir, ignore_errors=True)  # kept when something failed
    print("%d passed, %d failed" % (s.passed, s.failed))
    sys.exit(0 if s.failed == 0 and s.passed > 0 else 1)


if __name__ == "__main__":
    main()
