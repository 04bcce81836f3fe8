/*
 * MacroRunner: run an ImageJ 1.x macro and get a real exit status.
 *
 * ImageJ's own "-batch" mode always exits 0 and a macro error under a display opens a modal dialog that waits
 * for a click. This runner (used by the ArtSeg tests, usable in scripts) runs the macro with
 * ij.macro.Interpreter.setIgnoreErrors(true) and turns the outcome into an exit status:
 *
 *   0    the macro ran to its end
 *   1    macro error (the interpreter's message, or an exception, on stderr)
 *   2    the macro stopped itself with exit("message") (the message was printed; ArtSeg's macro does this on errors)
 *   3    a dialog opened that would wait for a click (its title and text on stderr)
 *   124  the macro ran longer than the timeout
 *
 * Usage (compile once: javac -cp ij.jar -d DIR MacroRunner.java; run under a display, e.g. xvfb-run -a):
 *   java -cp ij.jar:DIR [-Dplugins.dir=IMAGEJ_DIR] MacroRunner [OPTIONS] FILE.ijm [ARGUMENT]
 *   java -cp ij.jar:DIR [-Dplugins.dir=IMAGEJ_DIR] MacroRunner [OPTIONS] -e 'MACRO CODE' [ARGUMENT]
 * OPTIONS: --timeout SECONDS (default 600); --gui: start ImageJ's (hidden) main window first, so that the macro
 * runs as in the ImageJ GUI (not in batch mode: images and the ROI Manager get windows) instead of as with -batch.
 * The argument is what the macro's getArgument() returns. A file macro sees its own path in
 * getInfo("macro.filepath"), as when ImageJ runs it.
 */
import ij.macro.Interpreter;

import java.awt.Component;
import java.awt.Container;
import java.awt.Dialog;
import java.awt.Window;
import java.lang.reflect.Field;
import java.lang.reflect.Method;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;

public class MacroRunner {

    private static void usage() {
        System.err.println("usage: MacroRunner [--timeout SECONDS] [--gui] (FILE.ijm | -e CODE) [ARGUMENT]");
        System.exit(64);
    }

    public static void main(String[] args) throws Exception {
        int i = 0;
        double timeout = 600;
        boolean gui = false;
        while (i < args.length && args[i].startsWith("--")) {
            if (args[i].equals("--timeout") && i + 1 < args.length) {
                timeout = Double.parseDouble(args[i + 1]);
                i += 2;
            } else if (args[i].equals("--gui")) {
                gui = true;
                i += 1;
            } else usage();
        }
        if (args.length <= i) usage();
        String code;
        if (args[i].equals("-e")) {
            if (args.length <= i + 1) usage();
            code = args[i + 1];
            i += 2;
        } else {
            Path file = Paths.get(args[i]).toAbsolutePath();
            if (!Files.isRegularFile(file)) {
                System.err.println("MacroRunner: no such macro file: " + file);
                System.exit(64);
            }
            code = new String(Files.readAllBytes(file), StandardCharsets.UTF_8);
            ij.plugin.Macro_Runner.setFilePath(file.toString());
            i += 1;
        }
        String argument = args.length > i ? args[i] : "";
        startWatchdog((long) (timeout * 1000));
        if (gui) new ij.ImageJ(ij.ImageJ.NO_SHOW);

        Interpreter interp = new Interpreter();
        interp.setIgnoreErrors(true);
        int status = 0;
        try {
            interp.run(code, argument);
            String err = interp.getErrorMessage();
            if (err != null) {
                System.err.println("MacroRunner: macro error: " + err);
                status = 1;
            }
        } catch (Throwable t) {
            String msg = t.getMessage();
            if (msg != null && msg.startsWith("Macro canceled")) {
                System.err.println("MacroRunner: the macro stopped with exit() (message above)");
                status = 2;
            } else {
                System.err.println("MacroRunner: macro failed: " + t);
                status = 1;
            }
        }
        printLog();
        System.out.flush();
        System.err.flush();
        System.exit(status);
    }

    /** With ImageJ's GUI, print() goes to the Log window: copy it to stdout. */
    private static void printLog() {
        if (ij.IJ.getInstance() == null) return;
        String log = ij.IJ.getLog();
        if (log != null) System.out.print(log.endsWith("\n") ? log : log + "\n");
        System.out.flush();
    }

    /** Ends the JVM when a dialog would wait for a click, or when the timeout passes. */
    private static void startWatchdog(final long timeoutMs) {
        final long start = System.currentTimeMillis();
        Thread t = new Thread(() -> {
            while (true) {
                try {
                    Thread.sleep(200);
                } catch (InterruptedException e) {
                    return;
                }
                for (Window w : Window.getWindows()) {
                    if (w instanceof Dialog && w.isShowing()) {
                        StringBuilder sb = new StringBuilder();
                        collectText(w, sb);
                        System.err.println("MacroRunner: a dialog opened, which would wait for a click: ["
                                + ((Dialog) w).getTitle() + "] " + sb.toString().trim());
                        System.err.flush();
                        printLog();
                        Runtime.getRuntime().halt(3);
                    }
                }
                if (System.currentTimeMillis() - start > timeoutMs) {
                    System.err.println("MacroRunner: timeout after " + timeoutMs / 1000.0 + " s");
                    System.err.flush();
                    printLog();
                    Runtime.getRuntime().halt(124);
                }
            }
        }, "MacroRunner-watchdog");
        t.setDaemon(true);
        t.start();
    }

    /** The text shown by a dialog: labels, text fields and ImageJ's MultiLineLabel (its "lines" field). */
    private static void collectText(Component c, StringBuilder sb) {
        try {
            Method m = c.getClass().getMethod("getText");
            Object s = m.invoke(c);
            if (s != null) sb.append(s).append(' ');
        } catch (Exception ignored) {
            try {
                Field f = c.getClass().getDeclaredField("lines");
                f.setAccessible(true);
                Object v = f.get(c);
                if (v instanceof String[]) sb.append(String.join(" ", (String[]) v)).append(' ');
            } catch (Exception ignored2) {
                // not a text component
            }
        }
        if (c instanceof Container)
            for (Component child : ((Container) c).getComponents()) collectText(child, sb);
    }
}
