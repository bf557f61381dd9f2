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
	Groups        []int  // supplementary groups: SO_PEERGROUPS, else /proc/PID/status
	User          string // login name, "" if unknown
	Home          string // home directory, "" if unknown
	// Admin is set by the daemon, per request, for a member of Config.AdminGroup. Root is
	// an administrator whatever this says (IsAdmin).
	Admin bool

	// route is the label of the API route serving the request; permNone for callers of
	// the Go API (tests, the Interceptor), which get what their identity allows.
	route perm
}

// IsRoot reports whether the peer is root.
func (p *Peer) IsRoot() bool { return p.UID == 0 }

// IsAdmin reports whether the peer is an administrator, who sees and controls every task:
// root, or a member of the daemon's admin group.
func (p *Peer) IsAdmin() bool { return p.UID == 0 || p.Admin }

// mayWrite reports whether the request may change anything: not on a read route.
func (p *Peer) mayWrite() error {
	if p.route == permRead {
		return fmt.Errorf("%w: a read route cannot change anything", ErrNotPermitted)
	}
	return nil
}

// inGroup reports whether the peer has gid as its group or a supplementary group.
func (p *Peer) inGroup(gid int) bool {
	if p.GID == gid {
		return true
	}
	for _, g := range p.Groups {
		if g == gid {
			return true
		}
	}
	return false
}

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
	// The supplementary groups the peer had when it connected, like uid and gid; /proc
	// of its pid (which may be another process by now) only on kernels before 4.13.
	var gerr error
	if err := raw.Control(func(fd uintptr) { p.Groups, gerr = peerGroups(int(fd)) }); err != nil || gerr != nil {
		p.Groups = procGroups(p.PID, p.UID)
	}
	if u, err := user.LookupId(strconv.Itoa(p.UID)); err == nil {
		p.User, p.Home = u.Username, u.HomeDir
	}
	return p, nil
}

// procGroups reads the supplementary groups of pid; nil when unavailable or when the
// process there does not have uid as its real and effective uid (the peer is gone and its
// pid reused).
func procGroups(pid, uid int) []int {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return nil
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "Uid:"); ok {
			ids := strings.Fields(rest)
			if len(ids) < 2 || ids[0] != strconv.Itoa(uid) || ids[1] != strconv.Itoa(uid) {
				return nil
			}
			continue
		}
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
