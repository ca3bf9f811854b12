// Command ferry is Ferry's single binary: `ferry server`, `ferry agent` and
// the client verbs (`ferry vm ...`, `ferry host ...`).
package main

import (
	"os"

	"github.com/ferryvm/ferry/internal/cli"
)

func main() { os.Exit(cli.Execute()) }
