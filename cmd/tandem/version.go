package main

import (
	"fmt"

	"github.com/tandem-ha/tandem/internal/version"
)

func init() {
	register("version", "print the version", func(args []string) int {
		fmt.Println("tandem", version.Version)
		return exitOK
	})
}
