// Command testapp is the program inside the tiny FROM-scratch images that
// tests of container code build and run: it serves HTTP, answers its own
// health probe, or exits with a chosen code, so a test can make a container
// healthy, unhealthy or crashing without a registry or a base image.
package main

import (
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	listen := flag.String("listen", "", "serve HTTP on this address (\"/\" prints VERSION, \"/healthz\" answers the probe)")
	unhealthy := flag.Bool("unhealthy", false, "answer /healthz with 503")
	exit := flag.Int("exit", -1, "print a few log lines and exit with this code")
	probe := flag.String("probe", "", "GET this URL and exit 0 on 200, 1 otherwise (a healthcheck)")
	flag.Parse()

	if *probe != "" {
		c := http.Client{Timeout: 2 * time.Second}
		resp, err := c.Get(*probe)
		if err != nil || resp.StatusCode != http.StatusOK {
			os.Exit(1)
		}
		os.Exit(0)
	}
	fmt.Printf("testapp starting version=%s\n", os.Getenv("VERSION"))
	if *exit >= 0 {
		fmt.Println("testapp: doing nothing useful")
		fmt.Fprintf(os.Stderr, "testapp: exiting with code %d\n", *exit)
		os.Exit(*exit)
	}
	if *listen != "" {
		mux := http.NewServeMux()
		mux.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) {
			fmt.Fprintf(w, "version=%s\n", os.Getenv("VERSION"))
		})
		mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
			if *unhealthy {
				http.Error(w, "unhealthy", http.StatusServiceUnavailable)
				return
			}
			fmt.Fprintln(w, "ok")
		})
		go func() {
			if err := http.ListenAndServe(*listen, mux); err != nil {
				fmt.Fprintln(os.Stderr, "testapp:", err)
				os.Exit(2)
			}
		}()
	}
	// Wait for the stop signal so a container stops at once rather than after Docker's grace period.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	fmt.Println("testapp stopping")
}
