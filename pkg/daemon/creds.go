package daemon

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/user"
	"runtime"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Peer is the identity of the process at the other end of an API connection, taken from
// SO_PEERCRED when the connection was accepted.
type Peer struct {
	UID, GID, PID int
	Groups        []int  // supplementary groups, from /proc/PID/status when readable
	User          string // login name, "" if unknown
	Home          string // home directory, "" if unknown
}

// IsRoot reports whether the peer is root, who sees and controls every task.
func (p *Peer) IsRoot() bool { return p.UID == 0 }

type peerKey struct{}

// withPeer returns ctx carrying the credentials of conn, or ctx unchanged when conn is not
// a unix socket or the credentials cannot be read (requests on it are then refused).
func withPeer(ctx context.Context, c net.Conn) context.Context {
	p, err := peerOf(c)
	if err != nil {
		return ctx
	}
	return context.WithValue(ctx, peerKey{}, p)
}

func peerFrom(ctx context.Context) (*Peer, bool) {
	p, ok := ctx.Value(peerKey{}).(*Peer)
	return p, ok
}

func peerOf(c net.Conn) (*Peer, error) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return nil, fmt.Errorf("not a unix connection: %T", c)
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return nil, err
	}
	var cred *unix.Ucred
	var serr error
	if err := raw.Control(func(fd uintptr) {
		cred, serr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, err
	}
	if serr != nil {
		return nil, fmt.Errorf("SO_PEERCRED: %w", serr)
	}
	p := &Peer{UID: int(cred.Uid), GID: int(cred.Gid), PID: int(cred.Pid)}
	p.Groups = procGroups(p.PID)
	if u, err := user.LookupId(strconv.Itoa(p.UID)); err == nil {
		p.User, p.Home = u.Username, u.HomeDir
	}
	return p, nil
}

// procGroups reads the supplementary groups of pid; nil when unavailable.
func procGroups(pid int) []int {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return nil
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), "Groups:")
		if !ok {
			continue
		}
		var gs []int
		for _, field := range strings.Fields(rest) {
			if g, err := strconv.Atoi(field); err == nil {
				gs = append(gs, g)
			}
		}
		return gs
	}
	return nil
}

// groupNames maps gids to group names where they resolve.
func groupNames(gids []int) []string {
	var names []string
	for _, g := range gids {
		if gr, err := user.LookupGroupId(strconv.Itoa(g)); err == nil {
			names = append(names, gr.Name)
		}
	}
	return names
}

// ErrNotPermitted reports that the caller may not do what it asked.
var ErrNotPermitted = errors.New("not permitted")

// asUser runs fn with the file-system identity of p: on a dedicated, locked OS thread whose
// fsuid, fsgid and supplementary groups are those of p, so the kernel checks every path
// fn opens exactly as it would for the user (and drops the daemon's file capabilities
// while doing so). The thread is never unlocked, so the runtime destroys it when fn
// returns and no other goroutine ever runs with the borrowed identity.
//
// When the daemon does not run as root it can act only for its own uid (and root).
func asUser(p *Peer, fn func() error) error {
	euid := os.Geteuid()
	if euid != 0 {
		if p.UID != euid && p.UID != 0 {
			return fmt.Errorf("%w: this isolatord runs as uid %d and serves only that uid", ErrNotPermitted, euid)
		}
		return fn()
	}
	if p.UID == 0 {
		return fn()
	}
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// No UnlockOSThread: this thread's credentials are changed for good.
		groups := p.Groups
		if groups == nil {
			groups = []int{p.GID}
		}
		if err := setThreadGroups(groups); err != nil {
			done <- fmt.Errorf("setgroups: %w", err)
			return
		}
		unix.RawSyscall(unix.SYS_SETFSGID, uintptr(p.GID), 0, 0)
		unix.RawSyscall(unix.SYS_SETFSUID, uintptr(p.UID), 0, 0)
		// setfs[ug]id return the previous value: calling again confirms the change.
		if g, _, _ := unix.RawSyscall(unix.SYS_SETFSGID, uintptr(p.GID), 0, 0); int(g) != p.GID {
			done <- fmt.Errorf("setfsgid(%d) did not take", p.GID)
			return
		}
		if u, _, _ := unix.RawSyscall(unix.SYS_SETFSUID, uintptr(p.UID), 0, 0); int(u) != p.UID {
			done <- fmt.Errorf("setfsuid(%d) did not take", p.UID)
			return
		}
		done <- fn()
	}()
	return <-done
}
