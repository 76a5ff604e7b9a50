// Package suite runs containerd's own snapshotter conformance suite (snapshots/testsuite, as
// Debian ships containerd's source) against dragonfly-snapshotter.
//
// Every test case of the suite gets a fresh daemon on a fresh root (the root the suite hands
// the factory), started from the built binary, and talks to it in one of two ways:
//
//   - DRAGONFLY_SUITE_VIA=proxy (default): containerd's proxy client (snapshots/proxy) on the
//     daemon's socket, exactly what containerd's [proxy_plugins] entry does.
//   - DRAGONFLY_SUITE_VIA=containerd: a containerd of its own with the daemon as its
//     `dragonfly` proxy plugin, driven through containerd's client, so every call also passes
//     containerd's metadata layer (namespaces, its bolt database, leases and GC labels), the
//     way every real client reaches us.
//
// DRAGONFLY_SUITE_SCHEDULER=host:port starts each daemon with P2P configured against that
// scheduler. The suite's `Rename` case calls t.Skip itself, for every snapshotter: renaming a
// directory of a lower layer needs overlayfs's redirect_dir, which containerd does not turn on
// (docker/docker#25409); it is reported as skipped, not run. Built and run by
// integration/tests/containerd_suite.rs.
package suite

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd"
	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/namespaces"
	"github.com/containerd/containerd/snapshots"
	"github.com/containerd/containerd/snapshots/proxy"
	"github.com/containerd/containerd/snapshots/testsuite"
	"google.golang.org/grpc"
)

var hostSeq int32

// process is a child we started: its pid, so cleanup ends exactly it.
type process struct {
	name string
	cmd  *exec.Cmd
	log  string
}

func start(name, log string, args ...string) (*process, error) {
	f, err := os.Create(log)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	go func() { cmd.Wait(); f.Close() }()
	return &process{name: name, cmd: cmd, log: log}, nil
}

// stop sends SIGTERM, then SIGKILL after 10 s.
func (p *process) stop() {
	p.cmd.Process.Signal(syscall.SIGTERM)
	for i := 0; i < 100; i++ {
		if p.cmd.Process.Signal(syscall.Signal(0)) != nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	p.cmd.Process.Kill()
}

func (p *process) tail() string {
	b, _ := os.ReadFile(p.log)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 30 {
		lines = lines[len(lines)-30:]
	}
	return fmt.Sprintf("--- %s log (%s) ---\n%s", p.name, p.log, strings.Join(lines, "\n"))
}

// waitSocket waits until a unix socket accepts connections, or the process ends.
func waitSocket(p *process, sock string) error {
	for i := 0; i < 300; i++ {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			return nil
		}
		if p.cmd.ProcessState != nil {
			return fmt.Errorf("%s exited: %s\n%s", p.name, p.cmd.ProcessState, p.tail())
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("%s did not listen on %s within 15 s\n%s", p.name, sock, p.tail())
}

// unmountUnder detaches every mount at or below dir, deepest first.
func unmountUnder(dir string) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return
	}
	var points []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && (f[4] == dir || strings.HasPrefix(f[4], dir+"/")) {
			points = append(points, f[4])
		}
	}
	sort.Sort(sort.Reverse(sort.StringSlice(points)))
	for _, m := range points {
		syscall.Unmount(m, syscall.MNT_DETACH)
	}
}

func daemonConfig(root, sock string) string {
	cfg := fmt.Sprintf("root: %s\naddress: %s\nmetrics: {address: null}\nlog: {level: info}\n",
		filepath.Join(root, "dragonfly"), sock)
	if sched := os.Getenv("DRAGONFLY_SUITE_SCHEDULER"); sched != "" {
		id := atomic.AddInt32(&hostSeq, 1)
		cfg += fmt.Sprintf("p2p: {schedulers: ['%s'], listen: '127.0.0.1:0', advertise_ip: 127.0.0.1, host_id: suite-%d-%d}\n",
			sched, os.Getpid(), id)
	}
	return cfg
}

// startDaemon starts dragonfly-snapshotter with its state under root; its socket.
func startDaemon(root string) (*process, string, error) {
	bin := os.Getenv("DRAGONFLY_SNAPSHOTTER_BIN")
	if bin == "" {
		return nil, "", fmt.Errorf("DRAGONFLY_SNAPSHOTTER_BIN is not set (the built daemon)")
	}
	sock := filepath.Join(root, "df.sock")
	p, err := serve("dragonfly-snapshotter", root, "dragonfly.yaml", daemonConfig(root, sock), sock, bin)
	return p, sock, err
}

// serve writes `config` as dir/name, starts `bin --config` on it with its log beside it,
// and waits until it listens on `sock`.
func serve(what, dir, name, config, sock, bin string) (*process, error) {
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
		return nil, err
	}
	p, err := start(what, filepath.Join(dir, what+".log"), bin, "--config", path)
	if err != nil {
		return nil, err
	}
	if err := waitSocket(p, sock); err != nil {
		p.stop()
		return nil, err
	}
	return p, nil
}

// startContainerd starts a containerd with its root, state and sockets under dir and the
// daemon on dfSock as its `dragonfly` proxy plugin; its socket.
func startContainerd(dir, dfSock string) (*process, string, error) {
	sock := filepath.Join(dir, "ctd.sock")
	toml := fmt.Sprintf(`version = 2
root = "%s"
state = "%s"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "%s"
[ttrpc]
  address = "%s.ttrpc"
[proxy_plugins]
  [proxy_plugins.dragonfly]
    type = "snapshot"
    address = "%s"
`, filepath.Join(dir, "ctd-root"), filepath.Join(dir, "ctd-state"), sock, sock, dfSock)
	p, err := serve("containerd", dir, "containerd.toml", toml, sock, "containerd")
	return p, sock, err
}

// viaProxy hands the suite containerd's proxy client on the daemon's own socket.
func viaProxy(ctx context.Context, root string) (snapshots.Snapshotter, func() error, error) {
	daemon, sock, err := startDaemon(root)
	if err != nil {
		return nil, nil, err
	}
	conn, err := grpc.DialContext(ctx, "unix://"+sock, grpc.WithInsecure())
	if err != nil {
		daemon.stop()
		return nil, nil, err
	}
	sn := proxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), "dragonfly")
	return sn, func() error {
		conn.Close()
		daemon.stop()
		unmountUnder(root)
		return nil
	}, nil
}

// viaContainerd hands the suite containerd's client of a containerd that proxies to the daemon.
func viaContainerd(ctx context.Context, root string) (snapshots.Snapshotter, func() error, error) {
	daemon, dfSock, err := startDaemon(root)
	if err != nil {
		return nil, nil, err
	}
	ctd, sock, err := startContainerd(root, dfSock)
	if err != nil {
		daemon.stop()
		return nil, nil, err
	}
	client, err := containerd.New(sock, containerd.WithTimeout(20*time.Second))
	if err != nil {
		ctd.stop()
		daemon.stop()
		return nil, nil, fmt.Errorf("containerd client: %w\n%s", err, ctd.tail())
	}
	if err := probeReachesDaemon(ctx, client, dfSock); err != nil {
		client.Close()
		ctd.stop()
		daemon.stop()
		return nil, nil, fmt.Errorf("%w\n%s\n%s", err, ctd.tail(), daemon.tail())
	}
	return client.SnapshotService("dragonfly"), func() error {
		client.Close()
		ctd.stop()
		daemon.stop()
		unmountUnder(root)
		return nil
	}, nil
}

// probeReachesDaemon prepares a snapshot through containerd and finds it on the daemon's own
// socket, so the suite cannot pass against some other snapshotter of containerd's.
func probeReachesDaemon(ctx context.Context, client *containerd.Client, dfSock string) error {
	pctx := namespaces.WithNamespace(ctx, "dragonfly-suite-probe")
	sn := client.SnapshotService("dragonfly")
	if _, err := sn.Prepare(pctx, "probe", ""); err != nil {
		return fmt.Errorf("prepare through containerd: %w", err)
	}
	defer sn.Remove(pctx, "probe")
	conn, err := grpc.DialContext(ctx, "unix://"+dfSock, grpc.WithInsecure())
	if err != nil {
		return err
	}
	defer conn.Close()
	found := false
	direct := proxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), "dragonfly")
	err = direct.Walk(ctx, func(_ context.Context, info snapshots.Info) error {
		found = found || strings.HasSuffix(info.Name, "/probe")
		return nil
	})
	if err != nil {
		return fmt.Errorf("walk the daemon's snapshots: %w", err)
	}
	if !found {
		return fmt.Errorf("a snapshot prepared through containerd is not in dragonfly-snapshotter")
	}
	return nil
}

func TestDragonfly(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("containerd's snapshotter suite mounts overlays: run it as root")
	}
	factory := viaProxy
	if os.Getenv("DRAGONFLY_SUITE_VIA") == "containerd" {
		factory = viaContainerd
	}
	testsuite.SnapshotterSuite(t, "Dragonfly", factory)
}
