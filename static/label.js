// The labeler's work pages load this as <script type="module">; the code is in static/label/
// (main.js describes the modules).
import "./label/main.js";
