package cli

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/isolator-dev/isolator/pkg/guestfs"
	"github.com/isolator-dev/isolator/pkg/image"
)

// newImageCmd is `isoctl image`, the parent of the guest image commands.
func newImageCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "image",
		Short: "Build and inspect guest images",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return cmd.Help()
		},
	}
	cmd.AddCommand(newImageBuildCmd(), newImageLsCmd())
	return cmd
}

// imageBuildOptions are the flags of `isoctl image build`.
type imageBuildOptions struct {
	output      string
	add         []string
	libraryPath []string
	quiet       bool
}

func newImageBuildCmd() *cobra.Command {
	o := &imageBuildOptions{}
	cmd := &cobra.Command{
		Use:   "build --output FILE [--add HOSTPATH[:GUESTPATH]]... [PROGRAM...]",
		Short: "Build a guest image from programs, their libraries and extra files",
		Long: `Build a guest image: each PROGRAM (a path, or a name looked up in $PATH) is packed at
its host path together with its ELF interpreter, the shared libraries it needs and every
symlink on the way; each --add packs a host file or directory (recursively), at GUESTPATH
if given. An image needs at least one PROGRAM or --add: a static program packed with
--add alone needs nothing else. The image is written atomically. Progress goes to
stderr, the summary to stdout.

The micro VM mounts /tmp, /work, /input, /output, /dev and /proc over the image, so nothing
can be packed at or under them: a program whose host path is there (say /tmp/x/prog) must be
added at another guest path, with --add /tmp/x/prog:/usr/local/bin/prog.`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 && len(o.add) == 0 {
				return errors.New("nothing to pack: give at least one PROGRAM or --add HOSTPATH[:GUESTPATH]")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			return runImageBuild(cmd.OutOrStdout(), cmd.ErrOrStderr(), o, args)
		},
	}
	f := cmd.Flags()
	f.StringVarP(&o.output, "output", "o", "", "image file to write (required)")
	f.StringArrayVar(&o.add, "add", nil, "extra host file or directory, as HOSTPATH or HOSTPATH:GUESTPATH (repeatable)")
	f.StringArrayVar(&o.libraryPath, "library-path", nil, "extra library search directory (repeatable)")
	f.BoolVarP(&o.quiet, "quiet", "q", false, "print no progress lines")
	cmd.MarkFlagRequired("output")
	return cmd
}

func runImageBuild(stdout, stderr io.Writer, o *imageBuildOptions, args []string) error {
	cfg := image.BuildConfig{LibraryPath: o.libraryPath, Hidden: guestfs.MountPoints()}
	for _, a := range args {
		p := a
		if !strings.Contains(a, "/") {
			var err error
			if p, err = exec.LookPath(a); err != nil {
				return fmt.Errorf("program %s: %w", a, err)
			}
		}
		cfg.Programs = append(cfg.Programs, p)
	}
	for _, a := range o.add {
		host, guest, _ := strings.Cut(a, ":")
		if host == "" {
			return fmt.Errorf("--add %q: empty host path", a)
		}
		cfg.Files = append(cfg.Files, image.FileSpec{HostPath: host, GuestPath: guest})
	}
	if !o.quiet {
		cfg.Progress = func(msg string) { fmt.Fprintln(stderr, msg) }
	}
	rep, err := image.BuildFile(o.output, cfg)
	var hidden *image.HiddenPathError
	if errors.As(err, &hidden) {
		return fmt.Errorf("%w (%s)%s", err, mountRole(hidden.Mount), hiddenHint(hidden.Path, cfg))
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s: %d entries (%d files, %d directories, %d symlinks), %d libraries, %d bytes\nsha256 %s\n",
		o.output, rep.Entries, rep.Files, rep.Dirs, rep.Symlinks, len(rep.Libraries), rep.Bytes, rep.Digest)
	return nil
}

// hiddenHint says how to pack what was refused at the hidden guest path p elsewhere, when p
// is a program's own path or comes from an --add.
func hiddenHint(p string, cfg image.BuildConfig) string {
	for _, prog := range cfg.Programs {
		if abs, err := filepath.Abs(prog); err == nil && abs == p {
			return fmt.Sprintf("; pack it at another guest path with --add %s:/usr/local/bin/%s", prog, filepath.Base(abs))
		}
	}
	for _, f := range cfg.Files {
		gp := f.GuestPath
		if gp == "" {
			gp, _ = filepath.Abs(f.HostPath)
		}
		if p == gp || strings.HasPrefix(p, gp+"/") {
			return fmt.Sprintf("; give it a GUESTPATH elsewhere, e.g. --add %s:/srv/%s", f.HostPath, filepath.Base(gp))
		}
	}
	return ""
}

// mountRole says what the micro VM mounts at the mount point m.
func mountRole(m string) string {
	switch m {
	case "/tmp":
		return "/tmp is the guest's scratch space"
	case "/work":
		return "/work is the guest's working directory"
	case "/input":
		return "/input holds the run's inputs"
	case "/output":
		return "/output collects the run's outputs"
	case "/dev":
		return "/dev holds the guest's devices"
	case "/proc":
		return "/proc is the guest's synthetic /proc"
	}
	return m + " is a mount point"
}

func newImageLsCmd() *cobra.Command {
	var inodes bool
	cmd := &cobra.Command{
		Use:   "ls FILE [DIR]",
		Short: "List the entries of a guest image like ls -l",
		Long: `List every entry of the guest image FILE in path order, or only the children of the
directory DIR inside it, like ls -l. The image is fully verified first.`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runImageLs(cmd.OutOrStdout(), args, inodes)
		},
	}
	cmd.Flags().BoolVarP(&inodes, "inode", "i", false, "print inode numbers")
	return cmd
}

func runImageLs(stdout io.Writer, args []string, inodes bool) error {
	im, err := image.Open(args[0])
	if err != nil {
		return err
	}
	defer im.Close()
	var entries []*image.Entry
	if len(args) == 2 {
		if entries, err = im.ReadDir(args[1]); err != nil {
			return err
		}
	} else {
		im.Walk(func(e *image.Entry) error {
			entries = append(entries, e)
			return nil
		})
	}
	sizeWidth, inoWidth := 1, 1
	for _, e := range entries {
		sizeWidth = max(sizeWidth, len(fmt.Sprint(e.Size)))
		inoWidth = max(inoWidth, len(fmt.Sprint(e.Ino)))
	}
	bw := bufio.NewWriter(stdout)
	for _, e := range entries {
		if inodes {
			fmt.Fprintf(bw, "%*d ", inoWidth, e.Ino)
		}
		name := e.Path
		if e.Mode&fs.ModeSymlink != 0 {
			name += " -> " + e.Target
		}
		fmt.Fprintf(bw, "%s %*d %s %s\n", lsMode(e.Mode), sizeWidth, e.Size, e.ModTime.UTC().Format("2006-01-02 15:04"), name)
	}
	return bw.Flush()
}

// lsMode formats a mode the way ls -l does: "drwxr-sr-x", "lrwxrwxrwx", "-rwsr-xr-x".
func lsMode(m fs.FileMode) string {
	b := []byte("----------")
	switch {
	case m.IsDir():
		b[0] = 'd'
	case m&fs.ModeSymlink != 0:
		b[0] = 'l'
	}
	const rwx = "rwxrwxrwx"
	for i := range 9 {
		if m&(1<<(8-i)) != 0 {
			b[1+i] = rwx[i]
		}
	}
	special := func(set bool, i int, lower, upper byte) {
		if !set {
			return
		}
		if b[i] == '-' {
			b[i] = upper
		} else {
			b[i] = lower
		}
	}
	special(m&fs.ModeSetuid != 0, 3, 's', 'S')
	special(m&fs.ModeSetgid != 0, 6, 's', 'S')
	special(m&fs.ModeSticky != 0, 9, 't', 'T')
	return string(b)
}
